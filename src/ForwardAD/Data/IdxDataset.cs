using System.Buffers.Binary;
using System.IO.Compression;
using System.Numerics;
using ForwardAD.Tensors;

namespace ForwardAD.Data;

/// <summary>
/// MNIST-style IDX files (LeCun et al.): a big-endian header (0, 0, type 0x08 = unsigned byte, rank),
/// the dimensions, then the bytes. Images (rank ≥ 2, N×H×W or N×D) and labels (rank 1, N) come in two files,
/// raw or .gz. Pixels are scaled to [0, 1]. Grey images N×H×W get the feature shape [H, W, 1] (a channels-last
/// image, what the convolutions take; an MLP sees the same H·W values in the same order); N×D gives [D] and
/// N×H×W×C gives [H, W, C]. Every error names the file, the offset and what was expected:
/// a wrong magic number or data type, a rank of 0, dimensions whose product exceeds the file (checked without
/// overflow), truncated or trailing data, a damaged gzip stream, image and label counts that differ, a label
/// ≥ the class count.
/// </summary>
public static class IdxDataset
{
    /// <summary>Loads images and labels; <paramref name="classes"/> (2..<see cref="CsvDataset.MaxClasses"/>) bounds the labels.</summary>
    /// <exception cref="FileNotFoundException">A file does not exist.</exception>
    /// <exception cref="IOException">A path is a directory, or reading failed.</exception>
    /// <exception cref="InvalidDataException">A file is not valid IDX, or the two do not pair up; the message says where and why.</exception>
    public static Dataset Load(string imagesPath, string labelsPath, int classes = 10)
    {
        if (classes is < 2 or > CsvDataset.MaxClasses)
            throw new ArgumentOutOfRangeException(nameof(classes), classes, $"The class count for {labelsPath} must be 2..{CsvDataset.MaxClasses}.");
        var (imageDims, pixels) = Read(imagesPath);
        var (labelDims, labelBytes) = Read(labelsPath);
        if (imageDims.Length < 2) throw new InvalidDataException($"{imagesPath}: images need rank ≥ 2 (N × ...); the header says rank {imageDims.Length}.");
        if (labelDims.Length != 1) throw new InvalidDataException($"{labelsPath}: labels need rank 1 (N); the header says rank {labelDims.Length}.");
        if (imageDims[0] != labelDims[0])
            throw new InvalidDataException($"{imagesPath} has {imageDims[0]} images but {labelsPath} has {labelDims[0]} labels; they must pair up.");
        var labels = new float[labelBytes.Length];
        for (int i = 0; i < labels.Length; i++)
        {
            if (labelBytes[i] >= classes)
                throw new InvalidDataException($"{labelsPath}, offset {HeaderLength(1) + i}: label {labelBytes[i]} is out of range for {classes} classes.");
            labels[i] = labelBytes[i];
        }
        var features = new float[pixels.Length];
        for (int i = 0; i < pixels.Length; i++) features[i] = pixels[i] / 255f;
        int[] shape = imageDims.Length == 3 ? [imageDims[1], imageDims[2], 1] : imageDims[1..];
        return new Dataset(Path.GetFileName(imagesPath), new Shape(shape), classes, features, labels);
    }

    private static int HeaderLength(int rank) => 4 + 4 * rank;

    private static (int[] Dimensions, byte[] Data) Read(string path)
    {
        var bytes = DataFile.ReadAllBytes(path, "an IDX file (raw or .gz)");
        if (bytes.Length < 4) throw new InvalidDataException($"{path}: {bytes.Length} bytes, too short for the 4-byte IDX magic number.");
        if (bytes[0] != 0 || bytes[1] != 0)
            throw new InvalidDataException($"{path}, offset 0: the IDX magic number starts with two zero bytes; found 0x{bytes[0]:X2} 0x{bytes[1]:X2}. Is this an IDX file?");
        if (bytes[2] != 0x08)
            throw new InvalidDataException($"{path}, offset 2: data type 0x{bytes[2]:X2} is not supported; expected 0x08 (unsigned byte).");
        int rank = bytes[3];
        if (rank == 0) throw new InvalidDataException($"{path}, offset 3: rank 0; expected 1 (labels) or ≥ 2 (images).");
        if (bytes.Length < HeaderLength(rank))
            throw new InvalidDataException($"{path}, offset 3: rank {rank} needs a {HeaderLength(rank)}-byte header; the file has {bytes.Length} bytes.");
        var dims = new int[rank];
        for (int d = 0; d < rank; d++)
        {
            dims[d] = BinaryPrimitives.ReadInt32BigEndian(bytes.AsSpan(4 + 4 * d));
            if (dims[d] <= 0) throw new InvalidDataException($"{path}, offset {4 + 4 * d}: dimension {d} is {dims[d]}; dimensions must be positive.");
        }
        // The product is exact (BigInteger): in 64 bits 65536⁴ wraps to 0 and would match an empty data section.
        long available = bytes.Length - HeaderLength(rank);
        var expected = dims.Aggregate(BigInteger.One, (product, dim) => product * dim);
        if (expected != available)
            throw new InvalidDataException($"{path}, offset {HeaderLength(rank)}: the header promises {expected} data bytes ({string.Join("×", dims)}) but the file has {available}" +
                $"{(available < expected ? " (truncated)" : " (trailing bytes)")}.");
        return (dims, bytes[HeaderLength(rank)..]);
    }
}

/// <summary>
/// Fashion-MNIST (Xiao, Rasul &amp; Vollgraf 2017: 28×28 grey images of clothing, 10 classes, 60,000 training and
/// 10,000 test images) as Debian's package dataset-fashion-mnist installs it: gzip'd IDX files in
/// <see cref="DefaultDirectory"/>. Features [28, 28, 1] in [0, 1].
/// </summary>
public static class FashionMnist
{
    /// <summary>Where Debian's <c>dataset-fashion-mnist</c> package installs the gzip'd IDX files.</summary>
    public const string DefaultDirectory = "/usr/share/datasets/fashion-mnist";
    /// <summary>The sentence error messages end with when the files are missing: how to install them or where else to point.</summary>
    public const string InstallHint = "Install it with: sudo apt-get install dataset-fashion-mnist (Debian/Ubuntu), or give the IDX files as idx:IMAGES,LABELS.";

    /// <summary>The file names of a split: train-… (60,000) or t10k-… (10,000), as in the original distribution.</summary>
    public static (string Images, string Labels) Files(string directory, bool test)
    {
        string prefix = test ? "t10k" : "train";
        return (Path.Combine(directory, $"{prefix}-images-idx3-ubyte.gz"), Path.Combine(directory, $"{prefix}-labels-idx1-ubyte.gz"));
    }

    /// <summary>True when both files of both splits are in <paramref name="directory"/>.</summary>
    public static bool IsInstalled(string directory = DefaultDirectory) =>
        new[] { Files(directory, false), Files(directory, true) }.All(f => File.Exists(f.Images) && File.Exists(f.Labels));

    /// <summary>The training (60,000) or test (10,000) images.</summary>
    /// <exception cref="FileNotFoundException">A file is missing; the message names it and how to install the package.</exception>
    public static Dataset Load(bool test = false, string directory = DefaultDirectory)
    {
        var (images, labels) = Files(directory, test);
        foreach (var file in new[] { images, labels })
            if (!File.Exists(file))
                throw new FileNotFoundException($"Fashion-MNIST: {file} is missing{(Directory.Exists(directory) ? "" : $" (no folder {directory})")}. {InstallHint}", file);
        return IdxDataset.Load(images, labels) with { Name = test ? "fashion-mnist (test)" : "fashion-mnist" };
    }
}

/// <summary>
/// CIFAR-10/100 binary batches (Krizhevsky 2009): records of label byte(s) then 3072 pixel bytes
/// (3×32×32, channel-major). CIFAR-10 has one label byte (0..9); CIFAR-100 two (coarse 0..19, fine 0..99;
/// the fine label is used, both are checked). Several batch files may be given. Pixels are scaled to [0, 1] and
/// reordered to channels last: the feature shape is [32, 32, 3], feature (y·32 + x)·3 + c = file byte c·1024 + y·32 + x,
/// the layout the convolutions take (an MLP does not care about the order).
/// Every error names the file and the offset.
/// </summary>
public static class CifarDataset
{
    private const int Plane = 32 * 32, PixelBytes = 3 * Plane, CoarseClasses = 20;

    /// <exception cref="ArgumentException">No files given.</exception>
    /// <exception cref="FileNotFoundException">A file does not exist.</exception>
    /// <exception cref="IOException">A path is a directory, or reading failed.</exception>
    /// <exception cref="InvalidDataException">A file is not a whole number of records, or a label is out of range.</exception>
    public static Dataset Load(IReadOnlyList<string> paths, bool cifar100 = false)
    {
        if (paths.Count == 0) throw new ArgumentException("Give at least one CIFAR batch file.", nameof(paths));
        int labelBytes = cifar100 ? 2 : 1, record = labelBytes + PixelBytes, classes = cifar100 ? 100 : 10;
        string variant = cifar100 ? "CIFAR-100" : "CIFAR-10";
        var features = new List<float>();
        var labels = new List<float>();
        foreach (var path in paths)
        {
            var bytes = DataFile.ReadAllBytes(path, $"a {variant} binary batch", allowGzip: false);
            if (bytes.Length == 0) throw new InvalidDataException($"{path}: the file is empty; expected {record}-byte {variant} records.");
            if (bytes.Length % record != 0)
                throw new InvalidDataException($"{path}: {bytes.Length} bytes is not a whole number of {record}-byte {variant} records " +
                    $"(the last record starting at offset {bytes.Length / record * record} is cut short). Truncated file, or the wrong CIFAR variant?");
            for (int offset = 0; offset < bytes.Length; offset += record)
            {
                if (cifar100 && bytes[offset] >= CoarseClasses)
                    throw new InvalidDataException($"{path}, offset {offset}: coarse label {bytes[offset]} is out of range for {CoarseClasses} coarse classes (wrong CIFAR variant, or a damaged file?).");
                int label = bytes[offset + labelBytes - 1];
                if (label >= classes)
                    throw new InvalidDataException($"{path}, offset {offset + labelBytes - 1}: label {label} is out of range for {classes} classes (wrong CIFAR variant?).");
                labels.Add(label);
                // Channel-major on disk (plane c, row y, column x) → channels last (row y, column x, channel c).
                int pixels = offset + labelBytes;
                for (int position = 0; position < Plane; position++)
                    for (int c = 0; c < 3; c++) features.Add(bytes[pixels + c * Plane + position] / 255f);
            }
        }
        return new Dataset(Path.GetFileName(paths[0]), new Shape(32, 32, 3), classes, [.. features], [.. labels]);
    }
}

/// <summary>Checks and reads shared by the loaders: a path that is a directory or missing, a damaged gzip stream,
/// each reported with the path and what was expected there.</summary>
internal static class DataFile
{
    /// <summary>Throws unless <paramref name="path"/> names an existing file; <paramref name="expected"/> says what kind.</summary>
    public static void CheckIsFile(string path, string expected)
    {
        if (string.IsNullOrWhiteSpace(path)) throw new ArgumentException($"An empty path was given where {expected} was expected.", nameof(path));
        if (Directory.Exists(path)) throw new IOException($"'{path}' is a directory, not a file; give the path of {expected}.");
        if (!File.Exists(path)) throw new FileNotFoundException($"'{path}' does not exist; expected {expected}.", path);
    }

    /// <summary>The file's bytes, decompressed when it ends in .gz (and <paramref name="allowGzip"/>).</summary>
    public static byte[] ReadAllBytes(string path, string expected, bool allowGzip = true)
    {
        CheckIsFile(path, expected);
        try
        {
            var bytes = File.ReadAllBytes(path);
            return allowGzip && path.EndsWith(".gz", StringComparison.OrdinalIgnoreCase) ? Gunzip(bytes, path) : bytes;
        }
        catch (IOException e) when (e is not FileNotFoundException)
        {
            throw new IOException($"{path}: reading failed ({e.Message}).", e);
        }
    }

    /// <summary>
    /// Decompresses a whole gzip file and checks that it is whole. GZipStream checks the CRC-32 when the trailer is
    /// there, but stops quietly where a cut file ends (dotnet/runtime#47563), so the trailer's ISIZE, the uncompressed
    /// length mod 2³² (RFC 1952 §2.3.1), is compared with what came out: a cut file's last 4 bytes are deflate data.
    /// A file of several gzip members (bgzip, cat a.gz b.gz) fails this check, and the message says so.
    /// </summary>
    private static byte[] Gunzip(byte[] compressed, string path)
    {
        const int HeaderAndTrailer = 10 + 8;
        if (compressed.Length < HeaderAndTrailer + 2 || compressed[0] != 0x1F || compressed[1] != 0x8B)
            throw new InvalidDataException($"{path}: not a valid gzip file ({compressed.Length} bytes; a gzip file starts with 0x1F 0x8B and has at least 20). " +
                "Decompress it, or drop the .gz ending if it is not compressed.");
        byte[] data;
        try
        {
            using var stream = new GZipStream(new MemoryStream(compressed), CompressionMode.Decompress);
            using var memory = new MemoryStream();
            stream.CopyTo(memory);
            data = memory.ToArray();
        }
        catch (InvalidDataException e)
        {
            throw new InvalidDataException($"{path}: not a valid gzip file, or a damaged one ({e.Message}).", e);
        }
        uint recorded = BinaryPrimitives.ReadUInt32LittleEndian(compressed.AsSpan(^4));
        if (recorded != (uint)data.LongLength)
            throw new InvalidDataException($"{path}: the gzip data is truncated or damaged: its trailer (the last 4 bytes) records {recorded} uncompressed bytes " +
                $"(mod 2³²), but {data.LongLength} came out. Download or copy the file again. (Files of several gzip members, as bgzip writes, are not supported: gunzip it and load the plain file.)");
        return data;
    }
}
