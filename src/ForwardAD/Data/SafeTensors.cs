using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
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
/// <para>
/// The writer records the SHA-256 of the data section in the metadata (<see cref="ChecksumKey"/>); the reader
/// verifies it when present, so a flipped bit in the tensors is found. Files of other writers have no such key
/// and load as before. The reader checks the header the way the reference implementation does (unique keys,
/// string metadata, tensors that tile the data section without gaps or overlaps) and reports every violation
/// as an <see cref="InvalidDataException"/> naming the file, the place and what was expected.
/// </para>
/// </summary>
public static class SafeTensors
{
    /// <summary>Metadata key of the lower-case hex SHA-256 of the whole data section (every byte after the header).</summary>
    public const string ChecksumKey = "forwardad.sha256";

    /// <summary>Metadata key of the lower-case hex SHA-256 of the header's content: every tensor's name, dtype, shape
    /// and offsets and every other metadata entry, in a canonical form (independent of JSON spacing and key order).
    /// The data checksum alone would not notice two same-sized tensors whose offsets were swapped, or an edited
    /// metadata value.</summary>
    public const string HeaderChecksumKey = "forwardad.header_sha256";

    private const string MetadataKey = "__metadata__";
    private const long MaxHeaderBytes = 100_000_000; // the reference implementation's limit

    /// <summary>Writes <paramref name="tensors"/> and <paramref name="metadata"/> to <paramref name="path"/> atomically, with
    /// the data and header checksums (see the overload that takes data producers).</summary>
    /// <exception cref="ArgumentException">A tensor name is reserved (<c>__metadata__</c>) or repeated, a shape has a negative
    /// dimension or does not match the data's length, or a metadata value is null.</exception>
    public static void Write(string path, IReadOnlyList<NamedTensor> tensors, IReadOnlyDictionary<string, string> metadata) =>
        Write(path, tensors.Select(t => (t.Name, t.Shape, (Func<float[]>)(() => t.Data))).ToList(), metadata);

    /// <summary>Writes tensors whose data is produced on demand (so a failing producer aborts the write
    /// before the destination is touched). <see cref="ChecksumKey"/> and <see cref="HeaderChecksumKey"/> entries in
    /// <paramref name="metadata"/> are replaced by the checksums of what is actually written.</summary>
    public static void Write(string path, IReadOnlyList<(string Name, int[] Shape, Func<float[]> Data)> tensors, IReadOnlyDictionary<string, string> metadata)
    {
        // The checksum is only known after the data is written; the header holds a placeholder of the same length
        // that is overwritten in place, so the data is produced (and held) one tensor at a time.
        var placeholder = new string('0', 2 * SHA256.HashSizeInBytes);
        var meta = new JsonObject();
        var kept = metadata.Where(m => m.Key is not (ChecksumKey or HeaderChecksumKey)).ToList();
        foreach (var (key, value) in kept)
            meta[key] = value ?? throw new ArgumentException($"Metadata '{key}' is null; safetensors metadata values are strings.", nameof(metadata));
        meta[ChecksumKey] = placeholder;
        var header = new JsonObject { [MetadataKey] = meta };
        long offset = 0;
        var counts = new long[tensors.Count];
        var entries = new List<Entry>();
        for (int t = 0; t < tensors.Count; t++)
        {
            var (name, shape, _) = tensors[t];
            if (name == MetadataKey) throw new ArgumentException($"'{MetadataKey}' is reserved by the safetensors format; it cannot name a tensor.", nameof(tensors));
            if (header.ContainsKey(name)) throw new ArgumentException($"Tensor name '{name}' appears twice.", nameof(tensors));
            if (shape.Any(d => d < 0)) throw new ArgumentException($"Tensor '{name}' has a negative dimension in shape [{string.Join(", ", shape)}].", nameof(tensors));
            counts[t] = shape.Aggregate(1L, (a, d) => checked(a * d));
            long bytes = checked(4 * counts[t]);
            header[name] = new JsonObject
            {
                ["dtype"] = "F32",
                ["shape"] = new JsonArray([.. shape.Select(d => (JsonNode)d)]),
                ["data_offsets"] = new JsonArray(offset, offset + bytes),
            };
            entries.Add(new Entry(name, shape, offset, offset + bytes));
            offset = checked(offset + bytes);
        }
        meta[HeaderChecksumKey] = HeaderChecksum(entries, kept);
        var json = Encoding.UTF8.GetBytes(header.ToJsonString());
        var marker = Encoding.UTF8.GetBytes($"\"{ChecksumKey}\":\"{placeholder}\"");
        int checksumAt = json.AsSpan().IndexOf(marker) + marker.Length - 1 - placeholder.Length; // a key is unique in its object
        int padded = (json.Length + 7) / 8 * 8; // the data section starts 8-byte aligned; pad the JSON with spaces

        AtomicWriter.Write(path, stream =>
        {
            using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            Span<byte> length = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(length, (ulong)padded);
            stream.Write(length);
            stream.Write(json);
            for (int i = json.Length; i < padded; i++) stream.WriteByte((byte)' ');
            for (int t = 0; t < tensors.Count; t++)
            {
                var (name, shape, data) = tensors[t];
                var values = data();
                if (values.LongLength != counts[t])
                    throw new ArgumentException($"Tensor '{name}' has {values.Length} values for shape [{string.Join(", ", shape)}].", nameof(tensors));
                var bytes = new byte[values.Length * 4];
                for (int i = 0; i < values.Length; i++) BinaryPrimitives.WriteSingleLittleEndian(bytes.AsSpan(4 * i), values[i]);
                stream.Write(bytes);
                hash.AppendData(bytes);
            }
            stream.Position = 8 + checksumAt;
            stream.Write(Encoding.ASCII.GetBytes(Convert.ToHexStringLower(hash.GetHashAndReset())));
        });
    }

    /// <summary>Reads every tensor and the metadata. Malformed files throw <see cref="InvalidDataException"/> naming
    /// the file, the offset or tensor, and what was expected; a missing file throws <see cref="FileNotFoundException"/>.</summary>
    public static (IReadOnlyDictionary<string, NamedTensor> Tensors, IReadOnlyDictionary<string, string> Metadata) Read(string path)
    {
        if (Directory.Exists(path)) throw new IOException($"'{path}' is a directory, not a safetensors file.");
        if (!File.Exists(path)) throw new FileNotFoundException($"Checkpoint '{path}' does not exist.", path);
        byte[] bytes;
        try
        {
            bytes = File.ReadAllBytes(path);
        }
        catch (UnauthorizedAccessException e)
        {
            throw new IOException($"'{path}' cannot be read: {e.Message}", e);
        }
        return Parse(path, bytes);
    }

    private sealed record Entry(string Name, int[] Shape, long Begin, long End);

    private static (IReadOnlyDictionary<string, NamedTensor>, IReadOnlyDictionary<string, string>) Parse(string path, byte[] bytes)
    {
        if (bytes.Length < 8)
            throw new InvalidDataException($"{path}: {bytes.Length} bytes, too short for the 8-byte safetensors header length. Truncated or not a safetensors file.");
        ulong declared = BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        if (declared > MaxHeaderBytes)
            throw new InvalidDataException($"{path}, offset 0: header length {declared} is over the safetensors limit of {MaxHeaderBytes} bytes (the file has {bytes.Length}). Truncated or not a safetensors file.");
        if ((long)declared > bytes.Length - 8)
            throw new InvalidDataException($"{path}, offset 0: header length {declared} exceeds the file ({bytes.Length} bytes, so at most {bytes.Length - 8} bytes of header). Truncated or not a safetensors file.");
        int headerLength = (int)declared;
        long dataStart = 8 + headerLength, dataLength = bytes.Length - dataStart;
        string header = $"{path}, header (offset 8, {headerLength} bytes)";

        // The JSON reader checks UTF-8 only when a string is decoded (and then throws InvalidOperationException).
        var text = bytes.AsSpan(8, headerLength);
        if (!System.Text.Unicode.Utf8.IsValid(text))
            throw new InvalidDataException($"{path}, offset {8 + FirstInvalidUtf8(text)}: the header is not valid UTF-8; expected a UTF-8 JSON object.");
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(bytes.AsMemory(8, headerLength));
        }
        catch (JsonException e)
        {
            string at = e.LineNumber == 0 && e.BytePositionInLine is long column ? $"offset {8 + column}" : "offset 8";
            throw new InvalidDataException($"{path}, {at}: the header is not valid JSON ({e.Message}); expected a JSON object of tensor entries.", e);
        }
        using (document)
        {
            var root = document.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
                throw new InvalidDataException($"{header}: the header is not a JSON object but {Describe(root)}; expected {{\"name\": {{\"dtype\", \"shape\", \"data_offsets\"}}, ...}}.");
            var metadata = new Dictionary<string, string>();
            var entries = new List<Entry>();
            var keys = new HashSet<string>();
            foreach (var property in root.EnumerateObject())
            {
                var name = Decode(header, () => property.Name);
                if (!keys.Add(name))
                    throw new InvalidDataException($"{header}: key '{name}' appears twice; a safetensors header has unique keys.");
                if (name == MetadataKey) ReadMetadata(header, property.Value, metadata);
                else entries.Add(ReadEntry(header, name, property.Value, dataLength));
            }
            CheckTiling(path, entries, dataStart, dataLength);
            if (metadata.TryGetValue(HeaderChecksumKey, out var recordedHeader))
            {
                CheckHex(header, HeaderChecksumKey, recordedHeader);
                var actual = HeaderChecksum(entries, metadata.Where(m => m.Key is not (ChecksumKey or HeaderChecksumKey)));
                if (!string.Equals(actual, recordedHeader, StringComparison.OrdinalIgnoreCase))
                    throw new InvalidDataException($"{header}: checksum mismatch: the header was edited or is corrupt (its SHA-256 is {actual}; '{HeaderChecksumKey}' records " +
                        $"{recordedHeader.ToLowerInvariant()}). Use another copy of the file; after an intended edit, remove '{HeaderChecksumKey}'.");
            }
            if (metadata.TryGetValue(ChecksumKey, out var recorded)) VerifyChecksum(path, header, recorded, bytes.AsSpan((int)dataStart), dataStart);

            var tensors = new Dictionary<string, NamedTensor>();
            foreach (var entry in entries)
            {
                var source = bytes.AsSpan((int)(dataStart + entry.Begin), (int)(entry.End - entry.Begin));
                var data = new float[source.Length / 4];
                if (BitConverter.IsLittleEndian) MemoryMarshal.Cast<byte, float>(source).CopyTo(data);
                else for (int i = 0; i < data.Length; i++) data[i] = BinaryPrimitives.ReadSingleLittleEndian(source[(4 * i)..]);
                tensors[entry.Name] = new NamedTensor(entry.Name, entry.Shape, data);
            }
            return (tensors, metadata);
        }
    }

    private static void ReadMetadata(string header, JsonElement node, Dictionary<string, string> metadata)
    {
        if (node.ValueKind != JsonValueKind.Object)
            throw new InvalidDataException($"{header}: \"{MetadataKey}\" is {Describe(node)}; expected an object of string values.");
        foreach (var item in node.EnumerateObject())
        {
            var key = Decode($"{header}, \"{MetadataKey}\"", () => item.Name);
            if (item.Value.ValueKind != JsonValueKind.String)
                throw new InvalidDataException($"{header}: \"{MetadataKey}\" entry '{key}' is {Describe(item.Value)}; expected a string.");
            if (!metadata.TryAdd(key, Decode($"{header}, \"{MetadataKey}\" entry '{key}'", () => item.Value.GetString()!)))
                throw new InvalidDataException($"{header}: \"{MetadataKey}\" key '{key}' appears twice; a safetensors header has unique keys.");
        }
    }

    private static Entry ReadEntry(string header, string name, JsonElement node, long dataLength)
    {
        string where = $"{header}, tensor '{name}'";
        if (node.ValueKind != JsonValueKind.Object)
            throw new InvalidDataException($"{where}: the entry is {Describe(node)}; expected an object {{\"dtype\", \"shape\", \"data_offsets\"}}.");
        JsonElement? dtype = null, shapeNode = null, offsetsNode = null;
        var seen = new HashSet<string>();
        foreach (var field in node.EnumerateObject())
        {
            var key = Decode(where, () => field.Name);
            if (key is not ("dtype" or "shape" or "data_offsets")) continue; // other fields are ignored, as the reference implementation does
            if (!seen.Add(key)) throw new InvalidDataException($"{where}: \"{key}\" appears twice; a safetensors header has unique keys.");
            if (key == "dtype") dtype = field.Value;
            else if (key == "shape") shapeNode = field.Value;
            else offsetsNode = field.Value;
        }

        if (dtype is not { ValueKind: JsonValueKind.String } type)
            throw new InvalidDataException($"{where}: \"dtype\" is {Describe(dtype)}; expected the string \"F32\".");
        var dtypeName = Decode(where, () => type.GetString()!);
        if (dtypeName != "F32")
            throw new InvalidDataException($"{where}: dtype \"{Shorten(dtypeName)}\" is not supported; expected \"F32\" (this reader loads float32 tensors only).");

        if (shapeNode is not { ValueKind: JsonValueKind.Array } shapeArray)
            throw new InvalidDataException($"{where}: \"shape\" is {Describe(shapeNode)}; expected an array of non-negative integers.");
        var shape = new int[shapeArray.GetArrayLength()];
        long count = 1;
        int d = 0;
        foreach (var dimension in shapeArray.EnumerateArray())
        {
            if (dimension.ValueKind != JsonValueKind.Number || !dimension.TryGetInt64(out long size) || size < 0 || size > int.MaxValue)
                throw new InvalidDataException($"{where}: \"shape\" dimension {d} is {Describe(dimension)}; expected an integer from 0 to {int.MaxValue}.");
            shape[d++] = (int)size;
            // Checked: a product of large dimensions must not wrap around to a small (or negative) element count.
            try { count = checked(count * size); }
            catch (OverflowException) { count = long.MaxValue; }
        }
        if (count > Array.MaxLength)
            throw new InvalidDataException($"{where}: shape [{string.Join(", ", shape)}] has more than {Array.MaxLength} elements; expected a tensor that fits in memory.");

        if (offsetsNode is not { ValueKind: JsonValueKind.Array } offsetsArray || offsetsArray.GetArrayLength() != 2
            || offsetsArray[0].ValueKind != JsonValueKind.Number || !offsetsArray[0].TryGetInt64(out long begin)
            || offsetsArray[1].ValueKind != JsonValueKind.Number || !offsetsArray[1].TryGetInt64(out long end))
            throw new InvalidDataException($"{where}: \"data_offsets\" is {Describe(offsetsNode)}; expected [begin, end], two integers.");
        if (begin < 0 || end < begin || end > dataLength)
            throw new InvalidDataException($"{where}: \"data_offsets\" [{begin}, {end}] is not within the {dataLength}-byte data section (expected 0 ≤ begin ≤ end ≤ {dataLength}). Truncated or corrupt.");
        if (end - begin != 4 * count)
            throw new InvalidDataException($"{where}: \"data_offsets\" [{begin}, {end}] span {end - begin} bytes; shape [{string.Join(", ", shape)}] of F32 needs {4 * count}. Truncated or corrupt.");
        return new Entry(name, shape, begin, end);
    }

    /// <summary>The safetensors format requires the tensors, ordered by offset, to cover the data section exactly: each
    /// starts where the previous one ends, the first at 0, the last at the end. Overlapping tensors would alias
    /// each other's bytes; a gap or trailing bytes mean the header and data do not belong together.</summary>
    private static void CheckTiling(string path, List<Entry> entries, long dataStart, long dataLength)
    {
        const string Rule = "safetensors tensors must tile the data section without gaps or overlaps";
        long expected = 0;
        Entry? previous = null;
        foreach (var entry in entries.OrderBy(e => e.Begin).ThenBy(e => e.End))
        {
            if (entry.Begin < expected)
                throw new InvalidDataException($"{path}, offset {dataStart + entry.Begin}: tensor '{entry.Name}' at data_offsets [{entry.Begin}, {entry.End}] overlaps tensor '{previous!.Name}' at [{previous.Begin}, {previous.End}]; {Rule}.");
            if (entry.Begin > expected)
                throw new InvalidDataException($"{path}, offset {dataStart + expected}: bytes [{expected}, {entry.Begin}) of the data section belong to no tensor (tensor '{entry.Name}' starts at {entry.Begin}); {Rule}.");
            expected = entry.End;
            previous = entry;
        }
        if (expected != dataLength)
            throw new InvalidDataException($"{path}, offset {dataStart + expected}: the data section has {dataLength} bytes but the tensors cover {expected}; {Rule}. Appended data or a damaged header.");
    }

    private static void CheckHex(string header, string key, string recorded)
    {
        if (recorded.Length != 2 * SHA256.HashSizeInBytes || !recorded.All(char.IsAsciiHexDigit))
            throw new InvalidDataException($"{header}: metadata '{key}' is '{Shorten(recorded)}'; expected {2 * SHA256.HashSizeInBytes} hexadecimal digits (a SHA-256).");
    }

    /// <summary>SHA-256 of the header's content in a canonical form: tensors by name, then metadata by key (ordinal),
    /// every string length-prefixed, so no two different headers give the same byte stream.</summary>
    private static string HeaderChecksum(IEnumerable<Entry> tensors, IEnumerable<KeyValuePair<string, string>> metadata)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var number = new byte[8];
        void Add(long value)
        {
            BinaryPrimitives.WriteInt64LittleEndian(number, value);
            hash.AppendData(number);
        }
        void AddText(string value)
        {
            var utf8 = Encoding.UTF8.GetBytes(value);
            Add(utf8.Length);
            hash.AppendData(utf8);
        }
        var sorted = tensors.OrderBy(t => t.Name, StringComparer.Ordinal).ToList();
        Add(sorted.Count);
        foreach (var tensor in sorted)
        {
            AddText(tensor.Name);
            AddText("F32");
            Add(tensor.Shape.Length);
            foreach (int d in tensor.Shape) Add(d);
            Add(tensor.Begin);
            Add(tensor.End);
        }
        var entries = metadata.OrderBy(m => m.Key, StringComparer.Ordinal).ToList();
        Add(entries.Count);
        foreach (var (key, value) in entries)
        {
            AddText(key);
            AddText(value);
        }
        return Convert.ToHexStringLower(hash.GetHashAndReset());
    }

    private static int FirstInvalidUtf8(ReadOnlySpan<byte> text)
    {
        int at = 0;
        while (at < text.Length && Rune.DecodeFromUtf8(text[at..], out _, out int consumed) == System.Buffers.OperationStatus.Done) at += consumed;
        return at;
    }

    private static void VerifyChecksum(string path, string header, string recorded, ReadOnlySpan<byte> data, long dataStart)
    {
        CheckHex(header, ChecksumKey, recorded);
        var actual = SHA256.HashData(data);
        if (!actual.AsSpan().SequenceEqual(Convert.FromHexString(recorded)))
            throw new InvalidDataException($"{path}, offset {dataStart}: checksum mismatch: the tensor data is corrupt (the SHA-256 of the {data.Length}-byte data section is " +
                $"{Convert.ToHexStringLower(actual)}; the header records {recorded.ToLowerInvariant()}). Use another copy of the file.");
    }

    /// <summary>JSON may escape a lone UTF-16 surrogate ("\uD800"), which System.Text.Json refuses to decode
    /// (InvalidOperationException): a damaged file, reported as such.</summary>
    private static string Decode(string where, Func<string> read)
    {
        try
        {
            return read();
        }
        catch (InvalidOperationException e)
        {
            throw new InvalidDataException($"{where}: a key or string holds an escaped lone surrogate (\\uD800 to \\uDFFF), which is not valid UTF-16 text; expected valid Unicode strings.", e);
        }
    }

    private static string Describe(JsonElement? node) => node is not { } value ? "missing" : value.ValueKind switch
    {
        JsonValueKind.Object => "an object",
        JsonValueKind.Array => $"the array {Shorten(value.GetRawText())}",
        JsonValueKind.String => $"the string {Shorten(value.GetRawText())}",
        JsonValueKind.Number => $"the number {Shorten(value.GetRawText())}",
        JsonValueKind.Null => "null",
        _ => value.GetRawText(),
    };

    private static string Shorten(string text) => text.Length <= 60 ? text : text[..57] + "...";
}
