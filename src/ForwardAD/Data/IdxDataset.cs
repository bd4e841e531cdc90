using System.Buffers.Binary;
using System.IO.Compression;
using System.Numerics;
using ForwardAD.Tensors;

namespace ForwardAD.Data;

/// <summary>
/// MNIST-style IDX files (LeCun et al.): a big-endian header (0, 0, type 0x08 = unsigned byte, rank),
/// the dimensions, then the bytes. Images (rank ≥ 2, N×H×W or N×D) and labels (rank 1, N) come in two files,
/// raw or .gz. Pixels are scaled to [0, 1]. Every error names the file, the offset and what was expected:
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
        return new Dataset(Path.GetFileName(imagesPath), new Shape(imageDims[1..]), classes, features, labels);
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
/// CIFAR-10/100 binary batches (Krizhevsky 2009): records of label byte(s) then 3072 pixel bytes
/// (3×32×32, channel-major). CIFAR-10 has one label byte (0..9); CIFAR-100 two (coarse 0..19, fine 0..99;
/// the fine label is used, both are checked). Several batch files may be given. Pixels are scaled to [0, 1].
/// Every error names the file and the offset.
/// </summary>
public static class CifarDataset
{
    private const int PixelBytes = 3 * 32 * 32, CoarseClasses = 20;

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
                for (int i = 0; i < PixelBytes; i++) features.Add(bytes[offset + labelBytes + i] / 255f);
            }
        }
        return new Dataset(Path.GetFileName(paths[0]), new Shape(3, 32, 32), classes, [.. features], [.. labels]);
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
