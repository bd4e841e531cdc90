using System.Buffers.Binary;
using System.IO.Compression;
using ForwardAD.Data;

namespace ForwardAD.Tests;

/// <summary>The loaders on small files the tests write, good and bad: every error names the file and what is wrong.</summary>
public sealed class DataTests : IDisposable
{
    private readonly string _folder = Directory.CreateTempSubdirectory("forwardad-data-").FullName;

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    private string File(string name, byte[] bytes)
    {
        var path = Path.Combine(_folder, name);
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
        Assert.Throws<FileNotFoundException>(() => IdxDataset.Load(Path.Combine(_folder, "missing.idx"), labels));
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
        Assert.Equal(new Tensors.Shape(3, 32, 32), cifar.FeatureShape);
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
}
