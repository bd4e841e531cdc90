using System.Diagnostics;
using System.Text;
using System.Text.Json.Nodes;
using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Data;
using ForwardAD.Graph;
using ForwardAD.Guessing;
using ForwardAD.Optim;
using ForwardAD.Training;

namespace ForwardAD.Tests;

/// <summary>
/// Seeded fuzzing of real checkpoints: a small MLP trained one epoch on the embedded digits with GrAPE (so that the
/// file holds parameters, optimizer moments and estimator state), then hundreds of damaged copies (bit flips, byte
/// overwrites, truncations, header-length edits, JSON edits). Each copy goes through <see cref="SafeTensors.Read"/>
/// and <see cref="Trainer.Resume"/>; each must load or fail with InvalidDataException / ArgumentException /
/// IOException and a message (an InvalidDataException naming the file), never any other exception, and a failed
/// resume must leave the trainer as it was. A copy whose header is intact but whose tensor bytes changed must be
/// refused (the checksum), never loaded.
/// </summary>
public sealed class CheckpointFuzzTests(ITestOutputHelper output) : TemporaryFolderTests("forwardad-fuzz-")
{
    private const int Mutations = 600, Seed = 20261125;
    private static readonly Dictionary<string, string> Description = new()
    {
        ["model"] = "mlp 64-16-10 relu", ["guesser"] = "grape", ["rule"] = "clip 5 then adamw cosine 3e-3", ["data"] = "digits-300",
    };

    private static (Trainer Trainer, ParameterStore Store) NewTrainer()
    {
        var (train, test) = Digits.Load().Subset(Enumerable.Range(0, 300).ToArray(), "digits-300").Split(0.2, 3);
        var store = ParameterStore.Initialize(new MlpSpec(64, [16], 10, ElementwiseFunction.Relu).Build(), new CpuBackend(), 3);
        var rule = new ClipByGlobalNorm(5f).Then(Optimizers.AdamW(Schedule.CosineWithWarmup(3e-3f, 5, 60)));
        var guesser = Guessers.Grape(new GrapeOptions { Rule = FeedbackRules.Original(Schedule.Exponential(0.05f, 0.99f), 1e-3f) }, seed: 4);
        return (new Trainer(guesser, rule, store, train, test, new TrainingOptions(16, 3) { CosineEvery = 0 }), store);
    }

    [Fact(Timeout = 120_000)]
    public Task Damaged_checkpoints_load_or_fail_with_a_clear_error() => Task.Run(() =>
    {
        var (source, _) = NewTrainer();
        source.RunEpoch(0);
        var original = Path.Combine(Folder, "original.safetensors");
        source.SaveCheckpoint(original, Description);
        var pristine = File.ReadAllBytes(original);

        var (trainer, store) = NewTrainer();
        trainer.Resume(original, Description); // the undamaged file loads
        var path = Path.Combine(Folder, "damaged.safetensors");
        var random = new System.Random(Seed);
        var counts = new SortedDictionary<string, int[]>(StringComparer.Ordinal); // kind -> [read ok, read rejected, resume ok, resume rejected]
        var failures = new List<string>();
        var watch = Stopwatch.StartNew();
        for (int i = 0; i < Mutations; i++)
        {
            var (bytes, kind) = Mutate(pristine, random);
            File.WriteAllBytes(path, bytes);
            if (!counts.TryGetValue(kind, out var count)) counts[kind] = count = new int[4];

            var read = Outcome(() => SafeTensors.Read(path), path);
            // Damaged tensor bytes under an intact header are caught by the checksum: loading them is a failure, not an outcome.
            if (read is null && DataDamagedUnderIntactHeader(pristine, bytes)) failures.Add($"#{i} {kind}: damaged tensor bytes were loaded");
            if (read is null) count[0]++;
            else if (read.Value.Expected) count[1]++;
            else failures.Add($"#{i} {kind}, Read: {read.Value.Error}");

            var parameters = store.All.ToArray();
            long step = trainer.Step;
            int epoch = trainer.NextEpoch;
            var resume = Outcome(() => trainer.Resume(path, Description), path);
            if (resume is null) count[2]++;
            else if (resume.Value.Expected)
            {
                count[3]++;
                if (!parameters.AsSpan().SequenceEqual(store.All.ToArray()) || step != trainer.Step || epoch != trainer.NextEpoch)
                    failures.Add($"#{i} {kind}: the failed resume changed the trainer ({resume.Value.Error})");
            }
            else failures.Add($"#{i} {kind}, Resume: {resume.Value.Error}");
        }
        int[] total = [.. Enumerable.Range(0, 4).Select(k => counts.Values.Sum(c => c[k]))];
        output.WriteLine($"{Mutations} mutations of a {pristine.Length}-byte checkpoint in {watch.Elapsed.TotalSeconds:F2} s (seed {Seed}):");
        output.WriteLine($"  SafeTensors.Read: {total[0]} loaded, {total[1]} rejected; Trainer.Resume: {total[2]} loaded, {total[3]} rejected");
        foreach (var (kind, c) in counts)
            output.WriteLine($"  {kind,-28} read {c[0],4} loaded {c[1],4} rejected   resume {c[2],4} loaded {c[3],4} rejected");
        Assert.True(failures.Count == 0, $"{failures.Count} mutations ended badly:\n{string.Join("\n", failures.Take(20))}");
        // Both outcomes occur: the mutations are neither all harmless nor all fatal.
        Assert.True(total[0] > 0 && total[1] > 0 && total[2] > 0 && total[3] > 0, string.Join(", ", total));
    }, TestContext.Current.CancellationToken);

    /// <summary>The header (length and JSON) as written and the same file length, but some tensor byte changed.</summary>
    private static bool DataDamagedUnderIntactHeader(byte[] original, byte[] damaged)
    {
        int dataStart = 8 + (int)BitConverter.ToInt64(original, 0);
        return damaged.Length == original.Length && damaged.AsSpan(0, dataStart).SequenceEqual(original.AsSpan(0, dataStart))
            && !damaged.AsSpan(dataStart).SequenceEqual(original.AsSpan(dataStart));
    }

    /// <summary>null when the action succeeded; otherwise whether the exception is one a damaged file may cause
    /// (with a message, and the file's name for an InvalidDataException) and its description.</summary>
    private static (bool Expected, string Error)? Outcome(Action action, string path)
    {
        try
        {
            action();
            return null;
        }
        catch (Exception e)
        {
            bool typed = e is InvalidDataException or ArgumentException or IOException;
            bool named = e is not InvalidDataException || e.Message.Contains(path, StringComparison.Ordinal);
            return (typed && named && !string.IsNullOrWhiteSpace(e.Message), $"{e.GetType().Name}: {e.Message}");
        }
    }

    private static (byte[] Bytes, string Kind) Mutate(byte[] original, System.Random random)
    {
        var bytes = (byte[])original.Clone();
        int headerLength = (int)BitConverter.ToInt64(original, 0), dataStart = 8 + headerLength;
        switch (random.Next(10))
        {
            case 0:
                bytes[random.Next(bytes.Length)] ^= (byte)(1 << random.Next(8));
                return (bytes, "bit flip anywhere");
            case 1:
                bytes[random.Next(dataStart, bytes.Length)] ^= (byte)(1 << random.Next(8));
                return (bytes, "bit flip in the data");
            case 2:
                bytes[random.Next(8, dataStart)] ^= (byte)(1 << random.Next(8));
                return (bytes, "bit flip in the header");
            case 3:
                for (int n = random.Next(1, 9); n > 0; n--) bytes[random.Next(bytes.Length)] = (byte)random.Next(256);
                return (bytes, "byte overwrites");
            case 4:
                return (bytes[..random.Next(bytes.Length)], "truncation");
            case 5:
                return ([.. bytes, .. Enumerable.Range(0, random.Next(1, 65)).Select(_ => (byte)random.Next(256))], "appended bytes");
            case 6:
            {
                ulong length = random.Next(6) switch
                {
                    0 => (ulong)(headerLength + random.Next(1, 17)),
                    1 => (ulong)(headerLength - random.Next(1, 17)),
                    2 => 0,
                    3 => (ulong)bytes.Length,
                    4 => BitConverter.ToUInt64(RandomBytes(random, 8)),
                    _ => ulong.MaxValue - (ulong)random.Next(16),
                };
                BitConverter.TryWriteBytes(bytes.AsSpan(0, 8), length);
                return (bytes, "header length edit");
            }
            default:
                return JsonEdit(original, headerLength, random);
        }
    }

    private static readonly Func<JsonNode?>[] WrongDtypes =
        [() => "F16", () => "F64", () => "I32", () => "f32", () => "", () => 5, () => null, () => true, () => new JsonArray("F32")];

    private static readonly Func<JsonNode?>[] WrongShapes =
    [
        () => new JsonArray(), () => new JsonArray(-1), () => new JsonArray(0), () => new JsonArray(int.MaxValue, int.MaxValue),
        () => new JsonArray(4294967296L), () => new JsonArray(1e30), () => new JsonArray("1"), () => new JsonArray(new JsonArray(1)),
        () => null, () => "16", () => new JsonArray(65536, 65536, 65536, 65536), () => new JsonArray(1.5),
    ];

    private static readonly Func<JsonNode?>[] WrongValues =
        [() => "", () => "-1", () => "abc", () => "1e99", () => "99999999999999999999", () => "3.5", () => " 2", () => 5, () => null, () => new JsonObject(), () => new JsonArray()];

    /// <summary>Edits the JSON header (offsets, dtypes, shapes, keys, metadata), then writes it back with a correct
    /// header length in front of the original data section.</summary>
    private static (byte[] Bytes, string Kind) JsonEdit(byte[] original, int headerLength, System.Random random)
    {
        var header = JsonNode.Parse(original.AsSpan(8, headerLength))!.AsObject();
        var data = original.AsSpan(8 + headerLength).ToArray();
        var names = header.Select(p => p.Key).Where(k => k != "__metadata__").ToArray();
        var metadata = header["__metadata__"]!.AsObject();
        var metadataKeys = metadata.Select(p => p.Key).ToArray();
        JsonObject Entry(string name) => header[name]!.AsObject();
        string Pick(string[] from) => from[random.Next(from.Length)];
        string kind;
        switch (random.Next(14))
        {
            case 0:
            {
                var (a, b) = (Entry(Pick(names)), Entry(Pick(names)));
                (a["data_offsets"], b["data_offsets"]) = (b["data_offsets"]!.DeepClone(), a["data_offsets"]!.DeepClone());
                kind = "json: swapped offsets";
                break;
            }
            case 1:
            {
                var offsets = Entry(Pick(names))["data_offsets"]!.AsArray();
                int which = random.Next(2);
                offsets[which] = offsets[which]!.GetValue<long>() + (random.Next(2) == 0 ? -4 : 4) * random.Next(1, 4);
                kind = "json: overlapping offsets";
                break;
            }
            case 2:
            {
                var offsets = Entry(Pick(names))["data_offsets"]!.AsArray();
                long shift = 4 * random.Next(-3, 4);
                offsets[0] = offsets[0]!.GetValue<long>() + shift;
                offsets[1] = offsets[1]!.GetValue<long>() + shift;
                kind = "json: shifted offsets";
                break;
            }
            case 3:
                Entry(Pick(names))["dtype"] = WrongDtypes[random.Next(WrongDtypes.Length)]();
                kind = "json: wrong dtype";
                break;
            case 4:
            {
                var entry = Entry(Pick(names));
                if (random.Next(3) == 0) entry["shape"] = new JsonArray([.. entry["shape"]!.AsArray().Reverse().Select(d => d!.DeepClone())]);
                else entry["shape"] = WrongShapes[random.Next(WrongShapes.Length)]();
                kind = "json: wrong or huge shape";
                break;
            }
            case 5:
                Entry(Pick(names)).Remove(Pick(["dtype", "shape", "data_offsets"]));
                kind = "json: deleted tensor key";
                break;
            case 6:
                header.Remove(random.Next(4) == 0 ? "__metadata__" : Pick(names));
                kind = "json: deleted entry";
                break;
            case 7:
                metadata.Remove(Pick(metadataKeys));
                kind = "json: deleted metadata key";
                break;
            case 8:
                metadata[Pick(metadataKeys)] = WrongValues[random.Next(WrongValues.Length)]();
                kind = "json: metadata value";
                break;
            case 9:
                if (random.Next(2) == 0) header["__metadata__"] = WrongValues[random.Next(WrongValues.Length)]();
                else header[Pick(names)] = WrongValues[random.Next(WrongValues.Length)]();
                kind = "json: entry not an object";
                break;
            case 10:
                Entry(Pick(names))["data_offsets"] = random.Next(5) switch
                {
                    0 => new JsonArray(0),
                    1 => new JsonArray(0, 4, 8),
                    2 => new JsonArray("0", "4"),
                    3 => new JsonArray(random.NextInt64(), random.NextInt64()),
                    _ => new JsonArray(0, 1e20),
                };
                kind = "json: malformed offsets";
                break;
            case 11:
            {
                var sum = metadata["forwardad.sha256"]?.GetValue<string>() ?? new string('0', 64);
                metadata["forwardad.sha256"] = random.Next(3) switch
                {
                    0 => sum.ToUpperInvariant(), // the same checksum, upper-case hex: still valid
                    1 => Convert.ToHexStringLower(RandomBytes(random, 32)),
                    _ => sum[..^1],
                };
                kind = "json: checksum edit";
                break;
            }
            case 12:
            {
                // An escaped lone UTF-16 surrogate in a key or a value: valid JSON text, invalid Unicode.
                var text = header.ToJsonString();
                var key = System.Text.Json.JsonSerializer.Serialize(random.Next(2) == 0 ? Pick(metadataKeys) : Pick(names));
                int at = text.IndexOf(key, StringComparison.Ordinal) + key.Length - 1;
                return (Assemble(Encoding.UTF8.GetBytes(text.Insert(at, random.Next(2) == 0 ? "\\uD800" : "\\uDFFF")), data), "json: lone surrogate");
            }
            default:
            {
                // A duplicate key, which a JsonObject cannot hold: edit the text.
                var name = Pick(names);
                var text = header.ToJsonString();
                var duplicate = $"{System.Text.Json.JsonSerializer.Serialize(name)}:{Entry(name).ToJsonString()},";
                return (Assemble(Encoding.UTF8.GetBytes(text.Insert(1, duplicate)), data), "json: duplicate key");
            }
        }
        return (Assemble(Encoding.UTF8.GetBytes(header.ToJsonString()), data), kind);
    }

    private static byte[] RandomBytes(System.Random random, int count)
    {
        var bytes = new byte[count];
        random.NextBytes(bytes);
        return bytes;
    }

    private static byte[] Assemble(byte[] json, byte[] data)
    {
        var bytes = new byte[8 + json.Length + data.Length];
        BitConverter.TryWriteBytes(bytes.AsSpan(0, 8), (ulong)json.Length);
        json.CopyTo(bytes, 8);
        data.CopyTo(bytes, 8 + json.Length);
        return bytes;
    }
}
