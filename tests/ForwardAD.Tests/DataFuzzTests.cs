using System.Buffers.Binary;
using System.Globalization;
using System.IO.Compression;
using System.Text;
using ForwardAD.Data;

namespace ForwardAD.Tests;

/// <summary>
/// Seeded fuzzing of the data loaders: hundreds of damaged CSV (plain and gzip), IDX (raw and gzip) and CIFAR
/// inputs, each written to a file and loaded. Every input must end in a valid data set (checked: finite features,
/// whole labels below the class count) or in an InvalidDataException, ArgumentException or IOException whose
/// message names the damaged file. Any other exception type fails, and the timeout stands in for "never a hang".
/// Fixed seeds: a failure names its case and reproduces.
/// </summary>
public sealed class DataFuzzTests : IDisposable
{
    private readonly string _folder = Path.Combine(Path.GetTempPath(), $"forwardad-fuzz-{Guid.NewGuid():N}");

    public DataFuzzTests() => Directory.CreateDirectory(_folder);

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    private sealed class Tally
    {
        public int Valid, Rejected;
    }

    private string Write(string name, byte[] bytes)
    {
        var path = Path.Combine(_folder, name);
        File.WriteAllBytes(path, bytes);
        return path;
    }

    /// <summary>Loads, and accepts only a valid data set or a typed error naming <paramref name="blamed"/>.</summary>
    private static void Expect(string description, string blamed, Func<Dataset> load, Tally tally)
    {
        Dataset data;
        try
        {
            data = load();
        }
        catch (Exception e) when (e is InvalidDataException or ArgumentException or IOException)
        {
            Assert.True(e.Message.Contains(Path.GetFileName(blamed), StringComparison.Ordinal),
                $"{description}: the {e.GetType().Name} does not name {Path.GetFileName(blamed)}: {e.Message}");
            tally.Rejected++;
            return;
        }
        catch (Exception e)
        {
            Assert.Fail($"{description}: {e.GetType().Name} escaped the loader instead of a typed error naming the file:\n{e}");
            return;
        }
        Assert.True(data.Count > 0, $"{description}: loaded an empty data set");
        Assert.True(data.Classes is >= 2 and <= CsvDataset.MaxClasses, $"{description}: loaded {data.Classes} classes");
        Assert.True((long)data.Count * data.FeatureSize == data.Features.LongLength, $"{description}: {data.Features.LongLength} features for {data.Count} × {data.FeatureSize}");
        Assert.True(data.Features.All(float.IsFinite), $"{description}: loaded a non-finite feature");
        Assert.True(data.Labels.All(l => l >= 0 && l < data.Classes && l == MathF.Floor(l)), $"{description}: loaded a label outside 0..{data.Classes - 1}");
        tally.Valid++;
    }

    private static byte[] Gzip(byte[] bytes)
    {
        using var memory = new MemoryStream();
        using (var gz = new GZipStream(memory, CompressionLevel.Fastest)) gz.Write(bytes);
        return memory.ToArray();
    }

    private static readonly int[] ExtremeInts = [0, 1, -1, 2, 255, 256, 3073, 65536, int.MaxValue, int.MinValue, 1 << 30];

    /// <summary>One random byte-level damage; <paramref name="hot"/> lists offsets worth hitting (headers, label bytes).</summary>
    private static byte[] MutateBytes(byte[] input, int[] hot, System.Random rng, out string what)
    {
        var bytes = new List<byte>(input);
        int Position(int slack) => bytes.Count + slack <= 0 ? 0 : rng.Next(bytes.Count + slack);
        int HotOrAny(int slack) => hot.Length > 0 && rng.Next(2) == 0 ? Math.Min(hot[rng.Next(hot.Length)], Math.Max(bytes.Count - slack, 0)) : Position(1 - slack);
        switch (rng.Next(7))
        {
            case 0:
                int flips = 1 + rng.Next(4);
                for (int i = 0; i < flips && bytes.Count > 0; i++) bytes[Position(0)] ^= (byte)(1 << rng.Next(8));
                what = $"{flips} bit flip(s)";
                break;
            case 1:
                int keep = Position(0);
                bytes.RemoveRange(keep, bytes.Count - keep);
                what = $"truncated to {keep} bytes";
                break;
            case 2:
                var inserted = new byte[1 + rng.Next(16)];
                rng.NextBytes(inserted);
                bytes.InsertRange(Position(1), inserted);
                what = $"{inserted.Length} bytes inserted";
                break;
            case 3:
                int start = Position(0), count = Math.Min(1 + rng.Next(64), bytes.Count - start);
                bytes.RemoveRange(start, count);
                what = $"{count} bytes deleted at {start}";
                break;
            case 4:
                int at = HotOrAny(4), value = ExtremeInts[rng.Next(ExtremeInts.Length)];
                var word = new byte[4];
                BinaryPrimitives.WriteInt32BigEndian(word, value);
                for (int i = 0; i < 4 && at + i < bytes.Count; i++) bytes[at + i] = word[i];
                what = $"int {value} written at {at}";
                break;
            case 5:
                int offset = HotOrAny(1);
                byte b = rng.Next(3) switch { 0 => 0, 1 => 0xFF, _ => (byte)rng.Next(256) };
                if (offset < bytes.Count) bytes[offset] = b;
                what = $"byte 0x{b:X2} written at {offset}";
                break;
            default:
                int from = Position(0), length = Math.Min(1 + rng.Next(200), bytes.Count - from);
                bytes.InsertRange(Position(1), bytes.GetRange(from, length));
                what = $"{length} bytes duplicated";
                break;
        }
        return [.. bytes];
    }

    private static readonly string[] OddTokens =
    [
        "1e10", "-1", "1000000", "9999", "10000", "NaN", "Infinity", "-Infinity", "abc", "", " ", "1e39", "-1e39", "0.5",
        "99999999999999999999999", "-0", "3.0", "1,5", "0x1F", "1e-50", "+2", "\uFF11", "\"3\"", "1;2", "\u221E", "2x",
    ];

    private static readonly char[] Delimiters = [',', ';', '\t', ' ', '|'];

    /// <summary>One random text-level damage of a CSV file's lines.</summary>
    private static string MutateText(string text, System.Random rng, out string what)
    {
        var lines = text.Split('\n').ToList();
        int Line() => rng.Next(lines.Count);
        switch (rng.Next(10))
        {
            case 0:
            {
                int l = Line();
                var fields = lines[l].Split(',');
                int f = rng.Next(fields.Length);
                var token = OddTokens[rng.Next(OddTokens.Length)];
                fields[f] = token;
                lines[l] = string.Join(',', fields);
                what = $"line {l + 1} field {f + 1} := '{token}'";
                break;
            }
            case 1:
            {
                int l = Line();
                char d = Delimiters[rng.Next(Delimiters.Length)];
                lines[l] = lines[l].Replace(',', d);
                what = $"line {l + 1} delimited by '{d}'";
                break;
            }
            case 2:
            {
                char d = Delimiters[rng.Next(Delimiters.Length)];
                for (int l = 0; l < lines.Count; l++) lines[l] = lines[l].Replace(',', d);
                what = $"file delimited by '{d}'";
                break;
            }
            case 3:
            {
                int l = Line();
                lines.RemoveAt(l);
                what = $"line {l + 1} deleted";
                break;
            }
            case 4:
            {
                int l = Line(), at = rng.Next(lines.Count + 1);
                bool random = rng.Next(2) == 0;
                var line = random ? string.Join(',', Enumerable.Range(0, 1 + rng.Next(7)).Select(_ => rng.Next(4) == 0 ? OddTokens[rng.Next(OddTokens.Length)] : rng.Next(-5, 20).ToString(CultureInfo.InvariantCulture))) : lines[l];
                lines.Insert(at, line);
                what = random ? $"line '{line}' inserted at {at + 1}" : $"line {l + 1} copied to {at + 1}";
                break;
            }
            case 5:
            {
                int l = Line();
                var fields = lines[l].Split(',').ToList();
                if (rng.Next(2) == 0 && fields.Count > 0) fields.RemoveAt(rng.Next(fields.Count));
                else fields.Insert(rng.Next(fields.Count + 1), rng.Next(10).ToString(CultureInfo.InvariantCulture));
                lines[l] = string.Join(',', fields);
                what = $"line {l + 1} made ragged";
                break;
            }
            case 6:
            {
                var joined = string.Join('\n', lines);
                int at = rng.Next(joined.Length + 1);
                joined = rng.Next(2) == 0 && at < joined.Length ? joined.Remove(at, 1) : joined.Insert(at, ((char)rng.Next(32, 127)).ToString());
                lines = [.. joined.Split('\n')];
                what = $"character inserted or deleted at {at}";
                break;
            }
            case 7:
            {
                var joined = string.Join('\n', lines);
                int keep = rng.Next(joined.Length + 1);
                lines = [.. joined[..keep].Split('\n')];
                what = $"truncated to {keep} characters";
                break;
            }
            case 8:
            {
                int l = Line();
                lines[l] = lines[l] + "x";
                what = $"typo at the end of line {l + 1}";
                break;
            }
            default:
            {
                switch (rng.Next(4))
                {
                    case 0: lines.Insert(rng.Next(lines.Count + 1), ""); what = "blank line inserted"; break;
                    case 1: lines[0] = "\uFEFF" + lines[0]; what = "byte-order mark"; break;
                    case 2: lines = [.. lines.Select(x => x + "\r")]; what = "CRLF line ends"; break;
                    default: lines.RemoveAt(0); what = "header removed"; break;
                }
                break;
            }
        }
        return string.Join('\n', lines);
    }

    private static string ValidCsv(System.Random rng, bool header)
    {
        var text = new StringBuilder();
        if (header) text.Append("f1,f2,f3,f4,label\n");
        for (int row = 0; row < 10; row++)
        {
            for (int j = 0; j < 4; j++) text.Append((rng.Next(-100, 100) / 8.0).ToString(CultureInfo.InvariantCulture)).Append(',');
            text.Append(row % 4).Append('\n');
        }
        return text.ToString();
    }

    private static string MutateTextSeveral(string text, System.Random rng, out string what)
    {
        int count = 1 + rng.Next(3);
        var whats = new List<string>();
        for (int i = 0; i < count; i++)
        {
            text = MutateText(text, rng, out var one);
            whats.Add(one);
        }
        what = string.Join("; ", whats);
        return text;
    }

    [Fact(Timeout = 60_000)]
    public async Task Damaged_csv_files_load_or_fail_with_a_typed_error_naming_the_file()
    {
        await Task.Run(() =>
        {
            var rng = new System.Random(20240610);
            var tally = new Tally();
            for (int i = 0; i < 500; i++)
            {
                var text = MutateTextSeveral(ValidCsv(rng, header: rng.Next(2) == 0), rng, out var what);
                var path = Write("case.csv", Encoding.UTF8.GetBytes(text));
                Expect($"csv case {i} ({what})", path, () => CsvDataset.Load(path), tally);
            }
            Assert.InRange(tally.Valid, 50, 450);
        }, TestContext.Current.CancellationToken);
    }

    [Fact(Timeout = 60_000)]
    public async Task Damaged_gzipped_csv_files_load_or_fail_with_a_typed_error_naming_the_file()
    {
        await Task.Run(() =>
        {
            var rng = new System.Random(7_11_2024);
            var tally = new Tally();
            for (int i = 0; i < 300; i++)
            {
                var text = ValidCsv(rng, header: rng.Next(2) == 0);
                string what;
                byte[] bytes;
                if (i % 2 == 0)
                {
                    bytes = Gzip(Encoding.UTF8.GetBytes(MutateTextSeveral(text, rng, out var textual)));
                    what = $"text: {textual}";
                }
                else
                {
                    var gz = Gzip(Encoding.UTF8.GetBytes(text));
                    // The gzip header (10 bytes) and trailer (CRC-32, length) are the hot spots.
                    bytes = MutateBytes(gz, [0, 2, 3, 4, 8, gz.Length - 8, gz.Length - 4], rng, out var binary);
                    what = $"gzip bytes: {binary}";
                }
                var path = Write("case.csv.gz", bytes);
                Expect($"csv.gz case {i} ({what})", path, () => CsvDataset.Load(path), tally);
            }
            Assert.InRange(tally.Valid, 30, 270);
            Assert.InRange(tally.Rejected, 30, 270);
        }, TestContext.Current.CancellationToken);
    }

    private static byte[] Idx(int[] dims, byte[] data)
    {
        var bytes = new byte[4 + 4 * dims.Length + data.Length];
        bytes[2] = 0x08;
        bytes[3] = (byte)dims.Length;
        for (int d = 0; d < dims.Length; d++) BinaryPrimitives.WriteInt32BigEndian(bytes.AsSpan(4 + 4 * d), dims[d]);
        data.CopyTo(bytes, 4 + 4 * dims.Length);
        return bytes;
    }

    [Fact(Timeout = 60_000)]
    public async Task Damaged_idx_files_raw_and_gzipped_load_or_fail_with_a_typed_error_naming_the_file()
    {
        await Task.Run(() =>
        {
            var rng = new System.Random(60_000);
            var tally = new Tally();
            for (int i = 0; i < 500; i++)
            {
                int n = 1 + rng.Next(8);
                var pixels = new byte[n * 4 * 4];
                rng.NextBytes(pixels);
                var images = Idx([n, 4, 4], pixels);
                var labels = Idx([n], [.. Enumerable.Range(0, n).Select(_ => (byte)rng.Next(10))]);
                bool damageImages = rng.Next(2) == 0, gzip = i % 3 == 0;
                var target = damageImages ? images : labels;
                int[] hot = damageImages ? [0, 2, 3, 4, 8, 12, 16] : [0, 2, 3, 4, 8, 9, 10];
                string what;
                if (gzip && rng.Next(2) == 0)
                {
                    var gz = Gzip(target);
                    target = MutateBytes(gz, [0, 3, gz.Length - 8, gz.Length - 4], rng, out var binary);
                    what = $"gzip bytes: {binary}";
                }
                else
                {
                    target = MutateBytes(target, hot, rng, out what);
                    if (gzip) target = Gzip(target);
                }
                if (damageImages) images = target; else labels = target;
                if (gzip && !damageImages) images = Gzip(images);
                if (gzip && damageImages) labels = Gzip(labels);
                var suffix = gzip ? ".idx.gz" : ".idx";
                var imagesPath = Write("images" + suffix, images);
                var labelsPath = Write("labels" + suffix, labels);
                Expect($"idx case {i} ({(damageImages ? "images" : "labels")}{suffix}: {what})", damageImages ? imagesPath : labelsPath,
                    () => IdxDataset.Load(imagesPath, labelsPath), tally);
            }
            Assert.InRange(tally.Valid, 30, 450);
            Assert.InRange(tally.Rejected, 50, 470);
        }, TestContext.Current.CancellationToken);
    }

    [Fact(Timeout = 60_000)]
    public async Task Damaged_cifar_batches_load_or_fail_with_a_typed_error_naming_the_file()
    {
        await Task.Run(() =>
        {
            var rng = new System.Random(3073);
            var tally = new Tally();
            for (int i = 0; i < 300; i++)
            {
                bool cifar100 = i % 2 == 1;
                int labelBytes = cifar100 ? 2 : 1, record = labelBytes + 3072, records = 1 + rng.Next(3);
                byte[] Batch()
                {
                    var bytes = new byte[records * record];
                    for (int r = 0; r < records; r++)
                    {
                        rng.NextBytes(bytes.AsSpan(r * record + labelBytes, 3072));
                        if (cifar100) bytes[r * record] = (byte)rng.Next(20);
                        bytes[r * record + labelBytes - 1] = (byte)rng.Next(cifar100 ? 100 : 10);
                    }
                    return bytes;
                }
                var first = Batch();
                var second = Batch();
                int[] hot = [.. Enumerable.Range(0, records).SelectMany(r => new[] { r * record, r * record + labelBytes - 1 })];
                bool damageSecond = rng.Next(2) == 0;
                var damaged = MutateBytes(damageSecond ? second : first, hot, rng, out var what);
                var firstPath = Write("data_batch_1.bin", damageSecond ? first : damaged);
                var secondPath = Write("data_batch_2.bin", damageSecond ? damaged : second);
                Expect($"cifar{(cifar100 ? 100 : 10)} case {i} ({(damageSecond ? "second" : "first")} file: {what})", damageSecond ? secondPath : firstPath,
                    () => CifarDataset.Load([firstPath, secondPath], cifar100), tally);
            }
            Assert.InRange(tally.Valid, 30, 270);
            Assert.InRange(tally.Rejected, 30, 270);
        }, TestContext.Current.CancellationToken);
    }
}
