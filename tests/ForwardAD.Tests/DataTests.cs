using System.Buffers.Binary;
using System.IO.Compression;
using ForwardAD.Data;

namespace ForwardAD.Tests;

/// <summary>The loaders on small files the tests write, good and bad: every error names the file and what is wrong.</summary>
public sealed class DataTests() : TemporaryFolderTests("forwardad-data-")
{
    private string File(string name, byte[] bytes)
    {
        var path = Path.Combine(Folder, name);
        System.IO.File.WriteAllBytes(path, bytes);
        return path;
    }

    private static byte[] Idx(byte type, int[] dims, byte[] data)
    {
        var bytes = new byte[4 + 4 * dims.Length + data.Length];
        bytes[2] = type;
        bytes[3] = (byte)dims.Length;
        for (int d = 0; d < dims.Length; d++) BinaryPrimitives.WriteInt32BigEndian(bytes.AsSpan(4 + 4 * d), dims[d]);
        data.CopyTo(bytes, 4 + 4 * dims.Length);
        return bytes;
    }

    private static byte[] Gzip(byte[] bytes)
    {
        using var memory = new MemoryStream();
        using (var gz = new GZipStream(memory, CompressionLevel.Fastest)) gz.Write(bytes);
        return memory.ToArray();
    }

    [Fact]
    public void Embedded_digits_load_with_attributed_shape()
    {
        var digits = Digits.Load();
        Assert.Equal(1797, digits.Count);
        Assert.Equal(64, digits.FeatureSize);
        Assert.Equal(10, digits.Classes);
        Assert.InRange(digits.Features.Max(), 0.99f, 1f);
        Assert.Equal(Enumerable.Range(0, 10).Select(i => (float)i), digits.Labels.Distinct().Order());
    }

    [Fact]
    public void Split_is_a_deterministic_partition()
    {
        var digits = Digits.Load();
        var (train, test) = digits.Split(0.2, 5);
        var (train2, _) = digits.Split(0.2, 5);
        Assert.Equal(360, test.Count);
        Assert.Equal(1437, train.Count);
        Assert.Equal(train.Features, train2.Features);
        Assert.Equal(digits.Labels.Sum(), train.Labels.Sum() + test.Labels.Sum());
        var (train3, _) = digits.Split(0.2, 6);
        Assert.NotEqual(train.Labels, train3.Labels);
    }

    [Fact]
    public void Idx_files_load_raw_and_gzipped()
    {
        var pixels = Enumerable.Range(0, 3 * 2 * 2).Select(i => (byte)(i * 20)).ToArray();
        var images = Idx(0x08, [3, 2, 2], pixels);
        var labels = Idx(0x08, [3], [7, 0, 9]);
        var raw = IdxDataset.Load(File("i.idx", images), File("l.idx", labels));
        var gz = IdxDataset.Load(File("i.idx.gz", Gzip(images)), File("l.idx.gz", Gzip(labels)));
        Assert.Equal(new float[] { 7, 0, 9 }, raw.Labels);
        Assert.Equal(4, raw.FeatureSize);
        Assert.Equal(20 / 255f, raw.Features[1]);
        Assert.Equal(raw.Features, gz.Features);
    }

    [Fact]
    public void Bad_idx_files_are_explained()
    {
        var labels = File("l.idx", Idx(0x08, [2], [1, 2]));
        var truncated = File("t.idx", Idx(0x08, [2, 2, 2], [1, 2, 3, 4, 5]));
        Assert.Contains("promises 8 data bytes (2×2×2) but the file has 5 (truncated)", Assert.Throws<InvalidDataException>(() => IdxDataset.Load(truncated, labels)).Message);
        var wrongType = File("w.idx", Idx(0x0D, [2, 1, 1], new byte[8]));
        Assert.Contains("offset 2: data type 0x0D", Assert.Throws<InvalidDataException>(() => IdxDataset.Load(wrongType, labels)).Message);
        var notIdx = File("n.idx", [0x50, 0x4B, 3, 4, 0, 0]);
        Assert.Contains("Is this an IDX file?", Assert.Throws<InvalidDataException>(() => IdxDataset.Load(notIdx, labels)).Message);
        var images = File("i.idx", Idx(0x08, [3, 1, 1], [1, 2, 3]));
        Assert.Contains("has 3 images but", Assert.Throws<InvalidDataException>(() => IdxDataset.Load(images, labels)).Message);
        var twoImages = File("i2.idx", Idx(0x08, [2, 1, 1], [1, 2]));
        var badLabel = File("bl.idx", Idx(0x08, [2], [3, 12]));
        var error = Assert.Throws<InvalidDataException>(() => IdxDataset.Load(twoImages, badLabel));
        Assert.Contains("bl.idx, offset 9: label 12 is out of range for 10 classes", error.Message);
        Assert.Throws<FileNotFoundException>(() => IdxDataset.Load(Path.Combine(Folder, "missing.idx"), labels));
    }

    [Fact]
    public void Cifar_batches_load_and_bad_ones_are_explained()
    {
        var record10 = new byte[1 + 3072];
        record10[0] = 3;
        record10[1] = 255;
        var batch = File("data_batch_1.bin", [.. record10, .. record10]);
        var cifar = CifarDataset.Load([batch]);
        Assert.Equal(2, cifar.Count);
        Assert.Equal(new Tensors.Shape(32, 32, 3), cifar.FeatureShape); // channels last (CnnSpecTests checks the pixel order)
        Assert.Equal(1f, cifar.Features[0]);
        Assert.Equal(3f, cifar.Labels[1]);

        var truncated = File("cut.bin", record10[..2000]);
        Assert.Contains("not a whole number of 3073-byte CIFAR-10 records", Assert.Throws<InvalidDataException>(() => CifarDataset.Load([truncated])).Message);
        var record100 = new byte[2 + 3072];
        record100[0] = 4;
        record100[1] = 99;
        var hundred = File("train.bin", record100);
        Assert.Equal(99f, CifarDataset.Load([hundred], cifar100: true).Labels[0]);
        Assert.Contains("wrong CIFAR variant", Assert.Throws<InvalidDataException>(() => CifarDataset.Load([hundred])).Message);
    }

    [Fact]
    public void Csv_errors_name_the_file_and_line()
    {
        Assert.Contains("bad.csv, line 3: 3 fields, but the first row has 4", Assert.Throws<InvalidDataException>(() =>
            CsvDataset.Load(File("bad.csv", "a,b,c,label\n1,2,3,0\n1,2,1\n"u8.ToArray()))).Message);
        Assert.Contains("line 2, column 2: 'x' is not a finite number", Assert.Throws<InvalidDataException>(() =>
            CsvDataset.Load(File("nan.csv", "1,2,3,0\n1,x,3,1\n"u8.ToArray()))).Message);
        Assert.Contains("label (last column) must be a whole number", Assert.Throws<InvalidDataException>(() =>
            CsvDataset.Load(File("label.csv", "1,2,3,0.5\n"u8.ToArray()))).Message);
        Assert.Contains("label 7 is out of range for 3 classes", Assert.Throws<InvalidDataException>(() =>
            CsvDataset.Parse(new StringReader("1,7\n"), "inline", classes: 3)).Message);
        var ok = CsvDataset.Load(File("ok.csv", "f1,f2,label\n0.5,1,2\n1,0,0\n"u8.ToArray()));
        Assert.Equal(2, ok.Count);
        Assert.Equal(3, ok.Classes);
    }

    private string Text(string name, string text) => File(name, System.Text.Encoding.UTF8.GetBytes(text));

    private static string CsvError(string path) => Assert.Throws<InvalidDataException>(() => CsvDataset.Load(path)).Message;

    [Fact]
    public void Csv_labels_must_be_whole_numbers_below_the_class_limit()
    {
        // 1e10 used to overflow the class count; 1000000 used to build a model with a million outputs.
        var huge = CsvError(Text("huge.csv", "1,2,0\n3,4,1e10\n"));
        Assert.Contains("huge.csv, line 2, column 3", huge);
        Assert.Contains($"at most {CsvDataset.MaxClasses} classes", huge);
        Assert.Contains("renumber", huge);
        var million = CsvError(Text("million.csv", "1,2,0\n3,4,1000000\n"));
        Assert.Contains("million.csv, line 2, column 3", million);
        Assert.Contains($"at most {CsvDataset.MaxClasses} classes", million);
        Assert.Contains("line 1, column 2: the label", CsvError(Text("negative.csv", "1,-1\n")));
        Assert.Contains("line 1, column 2: the label", CsvError(Text("negative0.csv", "1,-3\n2,0\n")));
        Assert.Contains("line 2, column 3: the label", CsvError(Text("fraction.csv", "1,2,0\n1,2,2.5\n")));
        Assert.Contains("line 2, column 2: the label", CsvError(Text("word.csv", "1,0\n1,cat\n")));
        Assert.Contains("line 2, column 2: label 7 is out of range for 3 classes", Assert.Throws<InvalidDataException>(() =>
            CsvDataset.Parse(new StringReader("1,0\n1,7\n"), "inline", classes: 3)).Message);
        // The largest allowed label and a whole number written as a decimal both load.
        var top = CsvDataset.Load(Text("top.csv", $"1,{CsvDataset.MaxClasses - 1}\n2,3.0\n"));
        Assert.Equal(CsvDataset.MaxClasses, top.Classes);
        Assert.Equal(3f, top.Labels[1]);
        Assert.Throws<ArgumentOutOfRangeException>(() => CsvDataset.Parse(new StringReader("1,0\n"), "inline", classes: CsvDataset.MaxClasses + 1));
    }

    [Fact]
    public void Csv_delimiter_is_detected_from_the_first_row()
    {
        var comma = CsvDataset.Load(Text("comma.csv", "a,b,label\n0.5,1,2\n1,0,0\n"));
        var semicolon = CsvDataset.Load(Text("semicolon.csv", "a;b;label\n0.5;1;2\n1;0;0\n"));
        var tab = CsvDataset.Load(Text("tab.tsv", "0.5\t1\t2\n1\t0\t0\n"));
        foreach (var other in new[] { semicolon, tab })
        {
            Assert.Equal(comma.Features, other.Features);
            Assert.Equal(comma.Labels, other.Labels);
        }
        // A line with another delimiter than the one detected says which it found and which it expected.
        var mixed = CsvError(Text("mixed.csv", "1,2,0\n3;4;1\n"));
        Assert.Contains("mixed.csv, line 2", mixed);
        Assert.Contains("';'", mixed);
        Assert.Contains("','", mixed);
        // Decimal commas in a ';' file are explained, not reported as "no data rows".
        var decimalComma = CsvError(Text("decimal.csv", "1,5;2,0;1\n"));
        Assert.Contains("decimal.csv, line 1, column 1: '1,5'", decimalComma);
        Assert.Contains("decimal", decimalComma);
        Assert.Contains("no ',', ';' or tab", CsvError(Text("spaces.csv", "1 2 0\n3 4 1\n")));
    }

    [Fact]
    public void Csv_first_row_is_a_header_only_when_no_field_is_a_number()
    {
        // A typo in the first data row ('1x,2,0') used to be dropped silently as a header.
        var typo = CsvError(Text("typo.csv", "1x,2,0\n3,4,1\n"));
        Assert.Contains("typo.csv, line 1, column 1: '1x'", typo);
        Assert.Contains("header", typo);
        Assert.Contains("typo2.csv, line 1, column 2: '2x'", CsvError(Text("typo2.csv", "1,2x,0\n3,4,1\n")));
        var numberedHeader = CsvError(Text("numbered.csv", "x,2019,label\n3,4,1\n"));
        Assert.Contains("numbered.csv, line 1, column 1: 'x'", numberedHeader);
        var header = CsvDataset.Load(Text("header.csv", "\uFEFFpixel 1, pixel 2 ,label\n1,2,1\n3,4,0\n"));
        Assert.Equal(2, header.Count);
        Assert.Equal(new float[] { 1, 2, 3, 4 }, header.Features);
        // The header fixes the width: data rows must match it.
        Assert.Contains("line 2: 2 fields, but the first row has 3", CsvError(Text("narrow.csv", "a,b,label\n1,0\n")));
    }

    [Fact]
    public void Csv_empty_header_only_non_finite_and_directory_inputs_are_explained()
    {
        Assert.Contains("empty.csv: the file is empty", CsvError(Text("empty.csv", "")));
        Assert.Contains("blank.csv: the file is empty", CsvError(Text("blank.csv", "\n  \n\n")));
        Assert.Contains("only.csv: only a header (line 1)", CsvError(Text("only.csv", "a,b,label\n\n")));
        Assert.Contains("nan.csv, line 2, column 1: 'NaN' is not a finite number", CsvError(Text("nan.csv", "1,2,0\nNaN,2,1\n")));
        Assert.Contains("inf.csv, line 1, column 2: '-Infinity' is not a finite number", CsvError(Text("inf.csv", "1,-Infinity,0\n")));
        Assert.Contains("big.csv, line 1, column 1: '1e39' is not a finite number", CsvError(Text("big.csv", "1e39,0\n")));
        Assert.Contains("one.csv, line 1: a row needs at least one feature and a label", CsvError(Text("one.csv", "1\n2\n")));
        var folder = Directory.CreateDirectory(Path.Combine(Folder, "data.csv")).FullName;
        var directory = Assert.ThrowsAny<IOException>(() => CsvDataset.Load(folder));
        Assert.Contains("data.csv' is a directory, not a file", directory.Message);
        Assert.IsNotType<FileNotFoundException>(directory);
        Assert.Throws<FileNotFoundException>(() => CsvDataset.Load(Path.Combine(Folder, "missing.csv")));
    }

    [Fact]
    public void Csv_gzip_loads_and_damaged_gzip_names_the_file()
    {
        var text = "a,b,label\n0.5,1,2\n1,0,0\n"u8.ToArray();
        var gz = CsvDataset.Load(File("ok.csv.gz", Gzip(text)));
        Assert.Equal(CsvDataset.Load(File("ok.csv", text)).Features, gz.Features);
        var notGzip = Assert.Throws<InvalidDataException>(() => CsvDataset.Load(File("plain.csv.gz", text)));
        Assert.Contains("plain.csv.gz", notGzip.Message);
        Assert.Contains("gzip", notGzip.Message);
        var damaged = Gzip(text);
        damaged[^6] ^= 0xFF; // the CRC-32 in the gzip trailer
        Assert.Contains("crc.csv.gz", Assert.Throws<InvalidDataException>(() => CsvDataset.Load(File("crc.csv.gz", damaged))).Message);
    }

    [Fact]
    public void Truncated_gzip_files_are_reported_not_loaded_in_part()
    {
        // GZipStream stops quietly where a cut file ends: a .csv.gz cut between rows used to load with rows missing.
        var text = System.Text.Encoding.UTF8.GetBytes(string.Concat(Enumerable.Range(0, 2000).Select(i => $"{i % 97},{i % 13},{i % 3}\n")));
        var gz = Gzip(text);
        Assert.Equal(2000, CsvDataset.Load(File("whole.csv.gz", gz)).Count);
        foreach (var cut in new[] { 8, 4, 1, gz.Length / 2 })
        {
            var error = Assert.Throws<InvalidDataException>(() => CsvDataset.Load(File($"cut{cut}.csv.gz", gz[..^cut])));
            Assert.Contains($"cut{cut}.csv.gz", error.Message);
            Assert.Contains("truncated", error.Message);
        }
        Assert.Contains("empty.csv.gz: not a valid gzip file", Assert.Throws<InvalidDataException>(() => CsvDataset.Load(File("empty.csv.gz", []))).Message);
        var images = Gzip(Idx(0x08, [2, 1, 1], [1, 2]));
        var labels = File("l2.idx", Idx(0x08, [2], [1, 2]));
        Assert.Contains("truncated", Assert.Throws<InvalidDataException>(() => IdxDataset.Load(File("i.idx.gz", images[..^8]), labels)).Message);
    }

    [Fact]
    public void Idx_dimensions_that_overflow_directories_and_bad_class_counts_are_explained()
    {
        // 65536⁴ = 2⁶⁴ wraps to 0 in 64-bit arithmetic, which used to match an empty data section.
        var wrapping = File("wrap.idx", Idx(0x08, [65536, 65536, 65536, 65536], []));
        var labels = File("l65536.idx", Idx(0x08, [65536], new byte[65536]));
        var error = Assert.Throws<InvalidDataException>(() => IdxDataset.Load(wrapping, labels));
        Assert.Contains("wrap.idx", error.Message);
        Assert.Contains("65536×65536×65536×65536", error.Message);
        var rank0 = File("rank0.idx", Idx(0x08, [], []));
        var small = File("l2.idx", Idx(0x08, [2], [1, 2]));
        Assert.Contains("rank0.idx, offset 3: rank 0", Assert.Throws<InvalidDataException>(() => IdxDataset.Load(rank0, small)).Message);
        var images = File("i2.idx", Idx(0x08, [2, 1, 1], [1, 2]));
        var folder = Directory.CreateDirectory(Path.Combine(Folder, "labels.idx")).FullName;
        var directory = Assert.ThrowsAny<IOException>(() => IdxDataset.Load(images, folder));
        Assert.Contains("labels.idx' is a directory, not a file", directory.Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => IdxDataset.Load(images, small, classes: 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => IdxDataset.Load(images, small, classes: CsvDataset.MaxClasses + 1));
        var notGzip = Assert.Throws<InvalidDataException>(() => IdxDataset.Load(File("i2.idx.gz", Idx(0x08, [2, 1, 1], [1, 2])), small));
        Assert.Contains("i2.idx.gz: not a valid gzip file", notGzip.Message);
    }

    [Fact]
    public void Cifar_empty_files_directories_and_bad_coarse_labels_are_explained()
    {
        Assert.Contains("empty.bin: the file is empty", Assert.Throws<InvalidDataException>(() => CifarDataset.Load([File("empty.bin", [])])).Message);
        var folder = Directory.CreateDirectory(Path.Combine(Folder, "batches")).FullName;
        Assert.Contains("batches' is a directory, not a file", Assert.ThrowsAny<IOException>(() => CifarDataset.Load([folder])).Message);
        var record100 = new byte[2 + 3072];
        record100[0] = 20; // CIFAR-100 has 20 coarse classes
        record100[1] = 5;
        Assert.Contains("coarse.bin, offset 0: coarse label 20", Assert.Throws<InvalidDataException>(() => CifarDataset.Load([File("coarse.bin", record100)], cifar100: true)).Message);
    }
}
