using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace ForwardAD.Data;

/// <summary>A named float32 tensor as stored in a safetensors file.</summary>
public sealed record NamedTensor(string Name, int[] Shape, float[] Data);

/// <summary>
/// The safetensors format (Hugging Face): an 8-byte little-endian header length N, N bytes of JSON
/// ({name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {string: string}}, offsets relative
/// to the data section), then the raw little-endian data. PyTorch reads these files with
/// <c>safetensors.torch.load_file</c>. Writes are atomic: a temporary file in the same folder, flushed to
/// disk, then renamed over the destination, so an interrupted write never leaves a corrupt file.
/// </summary>
public static class SafeTensors
{
    private const long MaxHeaderBytes = 100_000_000;

    public static void Write(string path, IReadOnlyList<NamedTensor> tensors, IReadOnlyDictionary<string, string> metadata) =>
        Write(path, tensors.Select(t => (t.Name, t.Shape, (Func<float[]>)(() => t.Data))).ToList(), metadata);

    /// <summary>Writes tensors whose data is produced on demand (so a failing producer aborts the write
    /// before the destination is touched).</summary>
    public static void Write(string path, IReadOnlyList<(string Name, int[] Shape, Func<float[]> Data)> tensors, IReadOnlyDictionary<string, string> metadata)
    {
        var header = new JsonObject();
        if (metadata.Count > 0)
        {
            var meta = new JsonObject();
            foreach (var (key, value) in metadata) meta[key] = value;
            header["__metadata__"] = meta;
        }
        long offset = 0;
        var names = new HashSet<string>();
        foreach (var (name, shape, _) in tensors)
        {
            if (!names.Add(name)) throw new ArgumentException($"Tensor name '{name}' appears twice.");
            long bytes = 4L * shape.Aggregate(1L, (a, d) => a * d);
            header[name] = new JsonObject
            {
                ["dtype"] = "F32",
                ["shape"] = new JsonArray([.. shape.Select(d => (JsonNode)d)]),
                ["data_offsets"] = new JsonArray(offset, offset + bytes),
            };
            offset += bytes;
        }
        var json = Encoding.UTF8.GetBytes(header.ToJsonString());
        int padded = (json.Length + 7) / 8 * 8; // the data section starts 8-byte aligned; pad the JSON with spaces

        var directory = Path.GetDirectoryName(Path.GetFullPath(path))!;
        Directory.CreateDirectory(directory);
        var temporary = Path.Combine(directory, $".{Path.GetFileName(path)}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp");
        try
        {
            using (var stream = new FileStream(temporary, FileMode.CreateNew, FileAccess.Write))
            {
                Span<byte> length = stackalloc byte[8];
                BinaryPrimitives.WriteUInt64LittleEndian(length, (ulong)padded);
                stream.Write(length);
                stream.Write(json);
                for (int i = json.Length; i < padded; i++) stream.WriteByte((byte)' ');
                foreach (var (name, shape, data) in tensors)
                {
                    var values = data();
                    if (values.LongLength != shape.Aggregate(1L, (a, d) => a * d))
                        throw new ArgumentException($"Tensor '{name}' has {values.Length} values for shape [{string.Join(", ", shape)}].");
                    var bytes = new byte[values.Length * 4];
                    for (int i = 0; i < values.Length; i++) BinaryPrimitives.WriteSingleLittleEndian(bytes.AsSpan(4 * i), values[i]);
                    stream.Write(bytes);
                }
                stream.Flush(flushToDisk: true);
            }
            File.Move(temporary, path, overwrite: true);
        }
        finally
        {
            if (File.Exists(temporary)) File.Delete(temporary);
        }
    }

    public static (IReadOnlyDictionary<string, NamedTensor> Tensors, IReadOnlyDictionary<string, string> Metadata) Read(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"Checkpoint '{path}' does not exist.", path);
        var bytes = File.ReadAllBytes(path);
        if (bytes.Length < 8) throw new InvalidDataException($"{path}: {bytes.Length} bytes, too short for the 8-byte safetensors header length.");
        ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        if (headerLength > MaxHeaderBytes || (long)headerLength > bytes.Length - 8)
            throw new InvalidDataException($"{path}, offset 0: header length {headerLength} exceeds the file ({bytes.Length} bytes). Truncated or not a safetensors file.");
        JsonObject header;
        try
        {
            header = JsonNode.Parse(bytes.AsSpan(8, (int)headerLength)) as JsonObject
                ?? throw new InvalidDataException($"{path}, offset 8: the header is not a JSON object.");
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{path}, offset 8: the header is not valid JSON ({e.Message}).", e);
        }
        long dataStart = 8 + (long)headerLength, dataLength = bytes.Length - dataStart;
        var tensors = new Dictionary<string, NamedTensor>();
        var metadata = new Dictionary<string, string>();
        foreach (var (name, node) in header)
        {
            if (name == "__metadata__")
            {
                foreach (var (key, value) in node!.AsObject()) metadata[key] = value?.GetValue<string>() ?? "";
                continue;
            }
            var entry = node as JsonObject ?? throw new InvalidDataException($"{path}: header entry '{name}' is not an object.");
            var dtype = entry["dtype"]?.GetValue<string>();
            if (dtype != "F32") throw new InvalidDataException($"{path}: tensor '{name}' has dtype {dtype}; only F32 is supported.");
            var shape = entry["shape"]!.AsArray().Select(d => d!.GetValue<int>()).ToArray();
            var offsets = entry["data_offsets"]!.AsArray().Select(d => d!.GetValue<long>()).ToArray();
            long count = shape.Aggregate(1L, (a, d) => a * d);
            if (offsets.Length != 2 || offsets[0] < 0 || offsets[1] > dataLength || offsets[1] - offsets[0] != 4 * count)
                throw new InvalidDataException($"{path}: tensor '{name}' claims bytes [{string.Join(", ", offsets)}) of a {dataLength}-byte data section for shape [{string.Join(", ", shape)}]. Truncated or corrupt.");
            var data = new float[count];
            for (long i = 0; i < count; i++) data[i] = BinaryPrimitives.ReadSingleLittleEndian(bytes.AsSpan((int)(dataStart + offsets[0] + 4 * i)));
            tensors[name] = new NamedTensor(name, shape, data);
        }
        return (tensors, metadata);
    }
}
