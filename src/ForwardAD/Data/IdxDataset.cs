using System.Buffers.Binary;
using System.IO.Compression;
using ForwardAD.Tensors;

namespace ForwardAD.Data;

/// <summary>
/// MNIST-style IDX files (LeCun et al.): a big-endian header (0, 0, type 0x08 = unsigned byte, rank),
/// the dimensions, then the bytes. Images (rank 3, N×H×W) and labels (rank 1, N) come in two files,
/// raw or .gz. Pixels are scaled to [0, 1]. Every error names the file, the offset and what was expected.
/// </summary>
public static class IdxDataset
{
    public static Dataset Load(string imagesPath, string labelsPath, int classes = 10)
    {
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
        if (!File.Exists(path)) throw new FileNotFoundException($"IDX file '{path}' does not exist.", path);
        byte[] bytes;
        try
        {
            using var file = File.OpenRead(path);
            using var stream = path.EndsWith(".gz", StringComparison.OrdinalIgnoreCase) ? new GZipStream(file, CompressionMode.Decompress) : (Stream)file;
            using var memory = new MemoryStream();
            stream.CopyTo(memory);
            bytes = memory.ToArray();
        }
        catch (InvalidDataException e)
        {
            throw new InvalidDataException($"{path}: not a valid gzip file ({e.Message}).", e);
        }
        if (bytes.Length < 4) throw new InvalidDataException($"{path}: {bytes.Length} bytes, too short for the 4-byte IDX magic number.");
        if (bytes[0] != 0 || bytes[1] != 0)
            throw new InvalidDataException($"{path}, offset 0: the IDX magic number starts with two zero bytes; found 0x{bytes[0]:X2} 0x{bytes[1]:X2}. Is this an IDX file?");
        if (bytes[2] != 0x08)
            throw new InvalidDataException($"{path}, offset 2: data type 0x{bytes[2]:X2} is not supported; expected 0x08 (unsigned byte).");
        int rank = bytes[3];
        if (rank < 1 || bytes.Length < HeaderLength(rank))
            throw new InvalidDataException($"{path}, offset 3: rank {rank} needs a {HeaderLength(rank)}-byte header; the file has {bytes.Length} bytes.");
        var dims = new int[rank];
        long expected = 1;
        for (int d = 0; d < rank; d++)
        {
            dims[d] = BinaryPrimitives.ReadInt32BigEndian(bytes.AsSpan(4 + 4 * d));
            if (dims[d] <= 0) throw new InvalidDataException($"{path}, offset {4 + 4 * d}: dimension {d} is {dims[d]}; dimensions must be positive.");
            expected *= dims[d];
        }
        long available = bytes.Length - HeaderLength(rank);
        if (available != expected)
            throw new InvalidDataException($"{path}, offset {HeaderLength(rank)}: the header promises {expected} data bytes ({string.Join("×", dims)}) but the file has {available}{(available < expected ? " (truncated)" : " (trailing bytes)")}.");
        return (dims, bytes[HeaderLength(rank)..]);
    }
}

/// <summary>
/// CIFAR-10/100 binary batches (Krizhevsky 2009): records of label byte(s) then 3072 pixel bytes
/// (3×32×32, channel-major). CIFAR-10 has one label byte; CIFAR-100 two (coarse, fine; the fine label is
/// used). Several batch files may be concatenated. Pixels are scaled to [0, 1].
/// </summary>
public static class CifarDataset
{
    private const int PixelBytes = 3 * 32 * 32;

    public static Dataset Load(IReadOnlyList<string> paths, bool cifar100 = false)
    {
        if (paths.Count == 0) throw new ArgumentException("Give at least one CIFAR batch file.");
        int labelBytes = cifar100 ? 2 : 1, record = labelBytes + PixelBytes, classes = cifar100 ? 100 : 10;
        var features = new List<float>();
        var labels = new List<float>();
        foreach (var path in paths)
        {
            if (!File.Exists(path)) throw new FileNotFoundException($"CIFAR file '{path}' does not exist.", path);
            var bytes = File.ReadAllBytes(path);
            if (bytes.Length == 0 || bytes.Length % record != 0)
                throw new InvalidDataException($"{path}: {bytes.Length} bytes is not a whole number of {record}-byte {(cifar100 ? "CIFAR-100" : "CIFAR-10")} records " +
                    $"(the last record starting at offset {bytes.Length / record * record} is cut short). Truncated file, or the wrong CIFAR variant?");
            for (int offset = 0; offset < bytes.Length; offset += record)
            {
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
