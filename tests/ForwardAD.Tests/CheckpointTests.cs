using ForwardAD.Tensors;
using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Data;
using ForwardAD.Graph;
using ForwardAD.Guessing;
using ForwardAD.Optim;
using ForwardAD.Training;

namespace ForwardAD.Tests;

public sealed class CheckpointTests() : TemporaryFolderTests("forwardad-ckpt-")
{
    private static readonly Dictionary<string, string> Description = new() { ["model"] = "mlp 64-16-10 relu", ["guesser"] = "ap" };

    private static (Trainer Trainer, ParameterStore Store) NewTrainer(Guesser guesser, ulong seed = 3, int cosineEvery = 2)
    {
        var (train, test) = Digits.Load().Subset(Enumerable.Range(0, 300).ToArray(), "digits-300").Split(0.2, seed);
        var store = ParameterStore.Initialize(new MlpSpec(64, [16], 10, ElementwiseFunction.Relu).Build(), new CpuBackend(), seed);
        var rule = new ClipByGlobalNorm(5f).Then(Optimizers.AdamW(Schedule.CosineWithWarmup(3e-3f, 5, 60)));
        return (new Trainer(guesser, rule, store, train, test, new TrainingOptions(16, seed) { CosineEvery = cosineEvery }), store);
    }

    /// <summary>Four epochs straight equal two epochs, a checkpoint, a fresh trainer resumed from it, and two more:
    /// parameters, optimizer moments and metrics bit for bit.</summary>
    [Theory]
    [InlineData("ap")]
    [InlineData("directional")]
    [InlineData("grape")]
    public void Resume_continues_bit_for_bit(string name)
    {
        Guesser guesser = name switch
        {
            "ap" => Guessers.ActivationPerturbation(TangentMode.PerLayer, 2),
            "directional" => Guessers.DirectionalDescent(3),
            _ => Guessers.Grape(new GrapeOptions { Rule = FeedbackRules.Original(Schedule.Exponential(0.05f, 0.99f), 1e-3f) }, seed: 4),
        };
        var (straight, straightStore) = NewTrainer(guesser);
        var reports = Enumerable.Range(0, 4).Select(e => straight.RunEpoch(e)).ToList();

        var (first, _) = NewTrainer(guesser);
        first.RunEpoch(0);
        first.RunEpoch(1);
        var path = Path.Combine(Folder, "run.safetensors");
        first.SaveCheckpoint(path, Description);
        var (resumed, resumedStore) = NewTrainer(guesser);
        resumed.Resume(path, Description);
        Assert.Equal(2, resumed.NextEpoch);
        var tail = new[] { resumed.RunEpoch(2), resumed.RunEpoch(3) };
        Assert.Equal(straightStore.All.ToArray(), resumedStore.All.ToArray());
        Assert.Equal(reports[3].TestLoss, tail[1].TestLoss);
        Assert.Equal(reports[3].GlobalCosine, tail[1].GlobalCosine);
        Assert.Equal(straight.Step, resumed.Step);
    }

    /// <summary>A run cancelled within its second epoch stops at a step boundary, and the checkpoint written then resumes to
    /// the uninterrupted run: parameters bit for bit, and the interrupted epoch's report (its cosines measured before and
    /// after the interruption) as well.</summary>
    [Fact]
    public void A_run_cancelled_within_an_epoch_resumes_bit_for_bit_from_its_checkpoint()
    {
        var guesser = Guessers.Grape(new GrapeOptions(), seed: 4);
        var (straight, straightStore) = NewTrainer(guesser, cosineEvery: 3);
        var reports = Enumerable.Range(0, 3).Select(e => straight.RunEpoch(e)).ToList();

        var (first, _) = NewTrainer(guesser, cosineEvery: 3);
        first.RunEpoch(0);
        using var cancel = new CancellationTokenSource();
        Assert.Throws<OperationCanceledException>(() => first.RunEpoch(1, new CancelAfter(cancel, 5), cancel.Token));
        Assert.Equal(first.StepsPerEpoch + 5, first.Step);
        Assert.Equal(1, first.NextEpoch);
        var path = Path.Combine(Folder, "interrupted.safetensors");
        first.SaveCheckpoint(path, Description);

        var (resumed, resumedStore) = NewTrainer(guesser, cosineEvery: 3);
        resumed.Resume(path, Description);
        Assert.Equal(first.StepsPerEpoch + 5, resumed.Step);
        Assert.Equal(1, resumed.NextEpoch);
        var tail = new[] { resumed.RunEpoch(1), resumed.RunEpoch(2) };
        Assert.Equal(straightStore.All.ToArray(), resumedStore.All.ToArray());
        foreach (var (expected, actual) in reports.Skip(1).Zip(tail))
        {
            Assert.Equal(expected.TrainLoss, actual.TrainLoss);
            Assert.Equal(expected.TestLoss, actual.TestLoss);
            Assert.Equal(expected.GlobalCosine, actual.GlobalCosine);
            Assert.Equal(expected.SiteCosines.ToArray(), actual.SiteCosines.ToArray());
        }
        Assert.Equal(straight.Step, resumed.Step);

        // A token cancelled before an epoch's first step leaves the trainer at the epoch boundary: nothing to continue.
        using var before = new CancellationTokenSource();
        before.Cancel();
        Assert.Throws<OperationCanceledException>(() => resumed.RunEpoch(3, cancellationToken: before.Token));
        Assert.Equal(straight.Step, resumed.Step);
    }

    /// <summary>A CNN with batch normalisation (digits as 8×8×1 images): the running statistics are model state, saved in
    /// the checkpoint and restored, so a resumed run continues bit for bit, statistics, parameters and test metrics (which
    /// evaluate with the running statistics) included. Without them in the checkpoint the evaluation would differ.</summary>
    [Fact]
    public void Resume_restores_batch_norm_running_statistics_bit_for_bit()
    {
        (Trainer, ParameterStore) Cnn()
        {
            var (train, test) = Digits.Load().Subset(Enumerable.Range(0, 200).ToArray(), "digits-200").Split(0.25, 5);
            var model = CnnSpec.Parse("c4k3-bn-relu-p2,flat", new Shape(8, 8, 1), 10).Build();
            var store = ParameterStore.Initialize(model, new CpuBackend(), 5);
            return (new Trainer(Guessers.ActivationPerturbation(), Optimizers.AdamW(1e-3f), store, train, test, new TrainingOptions(16, 5) { CosineEvery = 3 }), store);
        }
        var (straight, straightStore) = Cnn();
        var reports = Enumerable.Range(0, 3).Select(e => straight.RunEpoch(e)).ToList();
        var (first, firstStore) = Cnn();
        first.RunEpoch(0);
        first.RunEpoch(1);
        Assert.NotEqual(ParameterStore.Initialize(firstStore.Model, new CpuBackend(), 5).State.ToArray(), firstStore.State.ToArray()); // the statistics moved
        var path = Path.Combine(Folder, "cnn.safetensors");
        first.SaveCheckpoint(path, Description);
        Assert.Contains("bn1.running_var", SafeTensors.Read(path).Tensors.Keys);
        var (resumed, resumedStore) = Cnn();
        resumed.Resume(path, Description);
        Assert.Equal(firstStore.State.ToArray(), resumedStore.State.ToArray());
        var last = resumed.RunEpoch(2);
        Assert.Equal(straightStore.State.ToArray(), resumedStore.State.ToArray());
        Assert.Equal(straightStore.All.ToArray(), resumedStore.All.ToArray());
        Assert.Equal(reports[2].TestLoss, last.TestLoss);
        Assert.Equal(reports[2].GlobalCosine, last.GlobalCosine);
    }

    [Fact]
    public void A_failed_write_leaves_the_previous_checkpoint_intact()
    {
        var path = Path.Combine(Folder, "ckpt.safetensors");
        SafeTensors.Write(path, [new NamedTensor("w", [2], [1f, 2f])], new Dictionary<string, string> { ["k"] = "v" });
        var before = File.ReadAllBytes(path);
        var failing = new List<(string, int[], Func<float[]>)> { ("w", [2], () => [3f, 4f]), ("boom", [1], () => throw new IOException("disk full")) };
        Assert.Throws<IOException>(() => SafeTensors.Write(path, failing, new Dictionary<string, string>()));
        Assert.Equal(before, File.ReadAllBytes(path));
        Assert.Single(Directory.GetFiles(Folder));
        var (tensors, metadata) = SafeTensors.Read(path);
        Assert.Equal(new[] { 1f, 2f }, tensors["w"].Data);
        Assert.Equal("v", metadata["k"]);
    }

    [Fact]
    public void The_file_is_valid_safetensors()
    {
        var path = Path.Combine(Folder, "layout.safetensors");
        SafeTensors.Write(path, [new NamedTensor("a", [2, 3], [1, 2, 3, 4, 5, 6]), new NamedTensor("b", [1], [7])], new Dictionary<string, string>());
        var bytes = File.ReadAllBytes(path);
        long headerLength = BitConverter.ToInt64(bytes, 0);
        Assert.Equal(0, (8 + headerLength) % 8);
        var json = System.Text.Encoding.UTF8.GetString(bytes, 8, (int)headerLength).TrimEnd();
        Assert.Contains("\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}", json);
        Assert.Contains("\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[24,28]}", json);
        Assert.Equal(8 + headerLength + 28, bytes.Length);
        Assert.Equal(7f, BitConverter.ToSingle(bytes, (int)(8 + headerLength + 24)));
    }

    [Fact]
    public void A_checkpoint_of_another_model_is_rejected_without_touching_the_run()
    {
        var (trainer, store) = NewTrainer(Guessers.Backprop);
        trainer.RunEpoch(0);
        var path = Path.Combine(Folder, "other.safetensors");
        var otherStore = ParameterStore.Initialize(new MlpSpec(64, [8], 10, ElementwiseFunction.Relu).Build(), new CpuBackend(), 1);
        var (train, test) = Digits.Load().Split(0.2, 1);
        var other = new Trainer(Guessers.Backprop, Optimizers.AdamW(1e-3f), otherStore, train, test, new TrainingOptions(16, 3));
        other.SaveCheckpoint(path, Description);
        var before = store.All.ToArray();
        var error = Assert.Throws<CheckpointMismatchException>(() => trainer.Resume(path, Description));
        Assert.Contains("tensor 'layer1.weight' has shape [8, 64]; the model expects [16, 64]", error.Message);
        Assert.Equal(before, store.All.ToArray());

        var changed = new Dictionary<string, string>(Description) { ["guesser"] = "wt" };
        trainer.SaveCheckpoint(path, Description);
        Assert.Contains("guesser is 'ap' but this run's is 'wt'", Assert.Throws<CheckpointMismatchException>(() => trainer.Resume(path, changed)).Message);

        File.WriteAllBytes(path, File.ReadAllBytes(path)[..100]);
        Assert.Contains("Truncated", Assert.Throws<InvalidDataException>(() => trainer.Resume(path, Description)).Message, StringComparison.OrdinalIgnoreCase);
    }

    /// <summary>A checkpoint of a deeper model differs in many tensors: the first three are named, the rest counted, so the
    /// message stays readable.</summary>
    [Fact]
    public void Many_tensor_differences_are_listed_briefly()
    {
        var (trainer, _) = NewTrainer(Guessers.Backprop);
        var path = Path.Combine(Folder, "deep.safetensors");
        var deepStore = ParameterStore.Initialize(new MlpSpec(64, [8, 8, 8, 8, 8], 10, ElementwiseFunction.Relu).Build(), new CpuBackend(), 1);
        var (train, test) = Digits.Load().Split(0.2, 1);
        new Trainer(Guessers.Backprop, Optimizers.AdamW(1e-3f), deepStore, train, test, new TrainingOptions(16, 1)).SaveCheckpoint(path, Description);
        var message = Assert.Throws<CheckpointMismatchException>(() => trainer.Resume(path, Description)).Message;
        Assert.Contains("more tensor differences", message);
        Assert.Equal(3, message.Split("tensor '").Length - 1);
    }

    /// <summary>Writes a safetensors file by hand: the 8-byte header length, the JSON as given (single quotes
    /// stand for double quotes), then <paramref name="dataBytes"/> zero bytes.</summary>
    private string WriteRaw(string name, string json, int dataBytes)
    {
        var path = Path.Combine(Folder, name);
        var header = System.Text.Encoding.UTF8.GetBytes(json.Replace('\'', '"'));
        var bytes = new byte[8 + header.Length + dataBytes];
        BitConverter.TryWriteBytes(bytes.AsSpan(0, 8), (ulong)header.Length);
        header.CopyTo(bytes, 8);
        File.WriteAllBytes(path, bytes);
        return path;
    }

    /// <summary>Every malformed header ends in an InvalidDataException that names the file and what was expected,
    /// never in a NullReference/InvalidOperation/Format/Overflow/KeyNotFound exception from the JSON layer.</summary>
    [Theory]
    [InlineData("{'a':5}", 0, "expected an object")]
    [InlineData("{'a':{'shape':[1],'data_offsets':[0,4]}}", 4, "dtype")]
    [InlineData("{'a':{'dtype':5,'shape':[1],'data_offsets':[0,4]}}", 4, "dtype")]
    [InlineData("{'a':{'dtype':'F16','shape':[1],'data_offsets':[0,2]}}", 2, "F32")]
    [InlineData("{'a':{'dtype':'F32','data_offsets':[0,4]}}", 4, "shape")]
    [InlineData("{'a':{'dtype':'F32','shape':'1','data_offsets':[0,4]}}", 4, "shape")]
    [InlineData("{'a':{'dtype':'F32','shape':[-1],'data_offsets':[0,4]}}", 4, "shape")]
    [InlineData("{'a':{'dtype':'F32','shape':[1.5],'data_offsets':[0,4]}}", 4, "shape")]
    [InlineData("{'a':{'dtype':'F32','shape':[[1]],'data_offsets':[0,4]}}", 4, "shape")]
    [InlineData("{'a':{'dtype':'F32','shape':[4294967297],'data_offsets':[0,4]}}", 4, "shape")]
    [InlineData("{'a':{'dtype':'F32','shape':[65536,65536,65536,65536,65536],'data_offsets':[0,4]}}", 4, "shape")]
    [InlineData("{'a':{'dtype':'F32','shape':[1]}}", 4, "data_offsets")]
    [InlineData("{'a':{'dtype':'F32','shape':[1],'data_offsets':[0]}}", 4, "data_offsets")]
    [InlineData("{'a':{'dtype':'F32','shape':[1],'data_offsets':['0','4']}}", 4, "data_offsets")]
    [InlineData("{'a':{'dtype':'F32','shape':[1],'data_offsets':[0,1e3]}}", 4, "data_offsets")]
    [InlineData("{'a':{'dtype':'F32','shape':[1],'data_offsets':[4,0]}}", 4, "data_offsets")]
    [InlineData("{'a':{'dtype':'F32','shape':[1],'data_offsets':[-4,0]}}", 4, "data_offsets")]
    [InlineData("{'a':{'dtype':'F32','shape':[1],'data_offsets':[0,8]}}", 8, "data_offsets")]
    [InlineData("{'a':{'dtype':'F32','shape':[1],'data_offsets':[0,99999999999]}}", 4, "data_offsets")]
    [InlineData("{'a':{'dtype':'F32','shape':[2],'data_offsets':[0,8]},'b':{'dtype':'F32','shape':[2],'data_offsets':[4,12]}}", 12, "tile")]
    [InlineData("{'a':{'dtype':'F32','shape':[2],'data_offsets':[0,8]},'b':{'dtype':'F32','shape':[2],'data_offsets':[0,8]}}", 8, "tile")]
    [InlineData("{'a':{'dtype':'F32','shape':[1],'data_offsets':[0,4]},'b':{'dtype':'F32','shape':[1],'data_offsets':[8,12]}}", 12, "tile")]
    [InlineData("{'a':{'dtype':'F32','shape':[1],'data_offsets':[4,8]}}", 8, "tile")]
    [InlineData("{'a':{'dtype':'F32','shape':[1],'data_offsets':[0,4]}}", 8, "tile")]
    [InlineData("{'__metadata__':{'k':1}}", 0, "__metadata__")]
    [InlineData("{'__metadata__':{'k':null}}", 0, "__metadata__")]
    [InlineData("{'__metadata__':[1]}", 0, "__metadata__")]
    [InlineData("{'__metadata__':null}", 0, "__metadata__")]
    [InlineData("{'__metadata__':{'k':'1','k':'2'}}", 0, "twice")]
    [InlineData("{'a':{'dtype':'F32','shape':[1],'data_offsets':[0,4]},'a':{'dtype':'F32','shape':[1],'data_offsets':[0,4]}}", 4, "twice")]
    [InlineData("[1]", 0, "not a JSON object")]
    [InlineData("null", 0, "not a JSON object")]
    [InlineData("{'a':{'dtype':'F32','shape':[1],'data_offsets':[0,4]}", 4, "not valid JSON")]
    [InlineData("", 4, "not valid JSON")]
    [InlineData("{'__metadata__':{'k':'\\uD800'}}", 0, "__metadata__")]
    [InlineData("{'\\uDC00x':{'dtype':'F32','shape':[1],'data_offsets':[0,4]}}", 4, "UTF-16")]
    [InlineData("{'__metadata__':{'\\uD800':'v'}}", 0, "UTF-16")]
    public void Malformed_headers_are_rejected_naming_the_file_and_what_was_expected(string json, int dataBytes, string expected)
    {
        var path = WriteRaw("bad.safetensors", json, dataBytes);
        var error = Assert.Throws<InvalidDataException>(() => SafeTensors.Read(path));
        Assert.Contains(path, error.Message);
        Assert.Contains(expected, error.Message);
    }

    [Theory]
    [InlineData(ulong.MaxValue)]
    [InlineData(1UL << 63)]
    [InlineData(17UL)]
    [InlineData(200_000_000UL)]
    public void Header_lengths_beyond_the_file_are_rejected(ulong headerLength)
    {
        var path = Path.Combine(Folder, "length.safetensors");
        var bytes = new byte[24];
        BitConverter.TryWriteBytes(bytes.AsSpan(0, 8), headerLength);
        "{}      "u8.CopyTo(bytes.AsSpan(8));
        File.WriteAllBytes(path, bytes);
        var error = Assert.Throws<InvalidDataException>(() => SafeTensors.Read(path));
        Assert.Contains(path, error.Message);
        Assert.Contains("header length", error.Message);
    }

    /// <summary>The layout the Python safetensors package writes: keys sorted in the JSON, data in another order,
    /// a scalar and an empty tensor, the header padded with spaces, no ForwardAD checksum. It must load.</summary>
    [Fact]
    public void A_file_laid_out_as_pytorch_writes_it_loads()
    {
        var json = "{'__metadata__':{'format':'pt'},'a':{'dtype':'F32','shape':[2],'data_offsets':[4,12]},'b':{'dtype':'F32','shape':[],'data_offsets':[0,4]},'c':{'dtype':'F32','shape':[0,3],'data_offsets':[12,12]}}";
        json += new string(' ', (8 - json.Length % 8) % 8);
        var path = WriteRaw("pt.safetensors", json, 12);
        var bytes = File.ReadAllBytes(path);
        int data = 8 + json.Length;
        BitConverter.TryWriteBytes(bytes.AsSpan(data, 4), 7f);
        BitConverter.TryWriteBytes(bytes.AsSpan(data + 4, 4), 1f);
        BitConverter.TryWriteBytes(bytes.AsSpan(data + 8, 4), 2f);
        File.WriteAllBytes(path, bytes);
        var (tensors, metadata) = SafeTensors.Read(path);
        Assert.Equal(new[] { 1f, 2f }, tensors["a"].Data);
        Assert.Equal(new[] { 7f }, tensors["b"].Data);
        Assert.Empty(tensors["b"].Shape);
        Assert.Empty(tensors["c"].Data);
        Assert.Equal(new[] { 0, 3 }, tensors["c"].Shape);
        Assert.Equal("pt", Assert.Single(metadata).Value);
    }

    /// <summary>The writer stores the SHA-256 of the data section in the metadata; one flipped bit is found.</summary>
    [Fact]
    public void A_flipped_bit_in_the_tensor_data_is_a_checksum_mismatch()
    {
        var path = Path.Combine(Folder, "sum.safetensors");
        SafeTensors.Write(path, [new NamedTensor("w", [3], [1f, 2f, 3f])], new Dictionary<string, string> { ["k"] = "v" });
        var bytes = File.ReadAllBytes(path);
        long dataStart = 8 + BitConverter.ToInt64(bytes, 0);
        var (_, metadata) = SafeTensors.Read(path);
        Assert.Equal(Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(bytes.AsSpan((int)dataStart))), metadata["forwardad.sha256"]);

        bytes[^3] ^= 0x10;
        File.WriteAllBytes(path, bytes);
        var error = Assert.Throws<InvalidDataException>(() => SafeTensors.Read(path));
        Assert.Contains(path, error.Message);
        Assert.Contains("checksum mismatch", error.Message);
    }

    /// <summary>The data checksum cannot see two same-sized tensors whose offsets were swapped, or an edited metadata
    /// value; the header checksum does. Removing the header checksum (an intended edit) makes the file load.</summary>
    [Fact]
    public void An_edited_header_is_a_checksum_mismatch()
    {
        var path = Path.Combine(Folder, "header.safetensors");
        SafeTensors.Write(path, [new NamedTensor("a", [2], [1f, 2f]), new NamedTensor("b", [2], [3f, 4f])], new Dictionary<string, string> { ["step"] = "15" });
        var bytes = File.ReadAllBytes(path);
        int headerLength = (int)BitConverter.ToInt64(bytes, 0);
        var json = System.Text.Encoding.UTF8.GetString(bytes, 8, headerLength);
        string Rewrite(string edited)
        {
            var header = System.Text.Encoding.UTF8.GetBytes(edited);
            var file = new byte[8 + header.Length + bytes.Length - 8 - headerLength];
            BitConverter.TryWriteBytes(file.AsSpan(0, 8), (ulong)header.Length);
            header.CopyTo(file, 8);
            bytes.AsSpan(8 + headerLength).CopyTo(file.AsSpan(8 + header.Length));
            var edit = Path.Combine(Folder, "edited.safetensors");
            File.WriteAllBytes(edit, file);
            return edit;
        }
        var swapped = Rewrite(json.Replace("[0,8]", "[X]").Replace("[8,16]", "[0,8]").Replace("[X]", "[8,16]"));
        var error = Assert.Throws<InvalidDataException>(() => SafeTensors.Read(swapped));
        Assert.Contains(swapped, error.Message);
        Assert.Contains("checksum mismatch", error.Message);
        Assert.Contains("header", error.Message);

        var stepEdited = Rewrite(json.Replace("\"step\":\"15\"", "\"step\":\"16\""));
        Assert.Contains("checksum mismatch", Assert.Throws<InvalidDataException>(() => SafeTensors.Read(stepEdited)).Message);

        var node = System.Text.Json.Nodes.JsonNode.Parse(json)!.AsObject();
        node["__metadata__"]!.AsObject().Remove(SafeTensors.HeaderChecksumKey);
        node["__metadata__"]!["step"] = "16";
        var (_, metadata) = SafeTensors.Read(Rewrite(node.ToJsonString()));
        Assert.Equal("16", metadata["step"]);
    }

    [Fact]
    public void A_header_that_is_not_utf8_is_rejected_naming_the_offset()
    {
        var path = WriteRaw("utf8.safetensors", "{'__metadata__':{'k':'ab'}}", 0);
        var bytes = File.ReadAllBytes(path);
        int at = Array.IndexOf(bytes, (byte)'a');
        bytes[at] = 0xC3; // a two-byte sequence start followed by an ASCII byte
        File.WriteAllBytes(path, bytes);
        var error = Assert.Throws<InvalidDataException>(() => SafeTensors.Read(path));
        Assert.Contains(path, error.Message);
        Assert.Contains($"offset {at}", error.Message);
        Assert.Contains("UTF-8", error.Message);
    }

    [Fact]
    public void A_description_may_not_overwrite_what_the_trainer_records()
    {
        var (trainer, _) = NewTrainer(Guessers.Backprop);
        var path = Path.Combine(Folder, "reserved.safetensors");
        foreach (var (key, value) in new[] { ("step", "0"), ("epochs_completed", "0"), ("forwardad.format", "1"), ("seed", "4"), ("batch_size", "8") })
        {
            var description = new Dictionary<string, string>(Description) { [key] = value };
            Assert.Contains(key, Assert.Throws<ArgumentException>(() => trainer.SaveCheckpoint(path, description)).Message);
            Assert.Contains(key, Assert.Throws<ArgumentException>(() => trainer.Resume(path, description)).Message);
        }
        Assert.False(File.Exists(path));
        // Repeating a setting with the trainer's own value is fine.
        var same = new Dictionary<string, string>(Description) { ["seed"] = "3", ["batch_size"] = "16" };
        trainer.SaveCheckpoint(path, same);
        trainer.Resume(path, same);
    }

    /// <summary>Temporaries of writers that no longer run (a PID that cannot exist; a PID whose process started after
    /// the temporary was last written, i.e. was reused; unlocked and untouched for minutes) are removed; a live writer's
    /// (its PID, or held locked) and another file's are kept.</summary>
    [Fact]
    public void Stale_temporaries_of_dead_writers_are_removed_and_live_ones_kept()
    {
        var path = Path.Combine(Folder, "run.safetensors");
        string Temporary(string file, int pid)
        {
            var temporary = Path.Combine(Folder, $".{file}.{pid}.{Guid.NewGuid():N}.tmp");
            File.WriteAllBytes(temporary, [1, 2, 3]);
            return temporary;
        }
        var dead = Temporary("run.safetensors", int.MaxValue);
        var reused = Temporary("run.safetensors", 1);
        File.SetLastWriteTimeUtc(reused, new DateTime(2000, 1, 1, 0, 0, 0, DateTimeKind.Utc));
        var live = Temporary("run.safetensors", Environment.ProcessId);
        var oldInit = Temporary("run.safetensors", 1);
        var other = Temporary("other.safetensors", int.MaxValue);
        var notOurs = Path.Combine(Folder, ".run.safetensors.notes.tmp");
        File.WriteAllBytes(notOurs, [1]);
        var bare = Path.Combine(Folder, ".run.safetensors.tmp");
        File.WriteAllBytes(bare, [1]);
        // Unlocked and untouched for ten minutes: its PID may be another namespace's (a container's); no writer holds it.
        var stranded = Temporary("run.safetensors", 1);
        File.SetLastWriteTimeUtc(stranded, DateTime.UtcNow - TimeSpan.FromMinutes(10));
        // Held open exclusively, as a live writer holds its temporary: kept whatever its name says.
        var locked = Temporary("run.safetensors", int.MaxValue);
        File.SetLastWriteTimeUtc(locked, new DateTime(2000, 1, 1, 0, 0, 0, DateTimeKind.Utc));
        using var holder = new FileStream(locked, FileMode.Open, FileAccess.ReadWrite, FileShare.None);

        SafeTensors.Write(path, [new NamedTensor("w", [1], [1f])], new Dictionary<string, string>());
        Assert.False(File.Exists(stranded), "an unlocked temporary not written for ten minutes was kept");
        Assert.True(File.Exists(locked), "a temporary held open by a live writer was deleted");
        Assert.False(File.Exists(dead), "the temporary of a process that does not exist was kept");
        Assert.False(File.Exists(reused), "the temporary written before its PID's process started was kept");
        Assert.True(File.Exists(live), "the temporary of a live writer was deleted");
        Assert.True(File.Exists(oldInit), "the temporary of a process that may still be writing was deleted");
        Assert.True(File.Exists(other) && File.Exists(notOurs) && File.Exists(bare), "a file of another destination or another kind was deleted");
        Assert.Equal(new[] { 1f }, SafeTensors.Read(path).Tensors["w"].Data);
    }

    /// <summary>A resume that fails (here on progress metadata that is not a number in range, or a missing state
    /// buffer) leaves the parameters bit for bit, the optimizer state and the progress as they were.</summary>
    [Theory]
    [InlineData("step", "abc")]
    [InlineData("step", "-3")]
    [InlineData("epochs_completed", "99999999999")]
    [InlineData("epochs_completed", "")]
    [InlineData("drop", "optimizer.")]
    [InlineData("drop", "layer2.bias")]
    [InlineData("extra", "layer9.weight")]
    public void A_failed_resume_leaves_the_trainer_unchanged(string edit, string value)
    {
        var guesser = Guessers.ActivationPerturbation();
        var (source, _) = NewTrainer(guesser);
        source.RunEpoch(0);
        var path = Path.Combine(Folder, "ok.safetensors");
        source.SaveCheckpoint(path, Description);
        var (tensors, metadata) = SafeTensors.Read(path);
        var list = tensors.Values.ToList();
        var meta = new Dictionary<string, string>(metadata);
        switch (edit)
        {
            case "drop": list.Remove(list.First(t => t.Name.StartsWith(value, StringComparison.Ordinal))); break;
            case "extra": list.Add(new NamedTensor(value, [2], [1f, 2f])); break;
            default: meta[edit] = value; break;
        }
        var bad = Path.Combine(Folder, "bad.safetensors");
        SafeTensors.Write(bad, list, meta);

        var (trainer, store) = NewTrainer(guesser);
        trainer.RunEpoch(0);
        trainer.RunEpoch(1);
        var before = store.All.ToArray();
        var error = Assert.Throws<CheckpointMismatchException>(() => trainer.Resume(bad, Description));
        Assert.Contains(bad, error.Message);
        Assert.Contains(edit is "drop" or "extra" ? value : edit, error.Message);
        Assert.Equal(before, store.All.ToArray());
        Assert.Equal(2, trainer.NextEpoch);
        Assert.Equal(2 * trainer.StepsPerEpoch, trainer.Step);
        // The optimizer state was not touched either: the run goes on exactly as one that never tried to resume.
        var (straight, straightStore) = NewTrainer(guesser);
        for (int e = 0; e < 3; e++) straight.RunEpoch(e);
        trainer.RunEpoch(2);
        Assert.Equal(straightStore.All.ToArray(), store.All.ToArray());
    }

    /// <summary>Resume names every difference it refuses in one message, in both directions (a key only the checkpoint
    /// has, a key only this run has), not only the first.</summary>
    [Fact]
    public void Resume_states_every_difference_at_once()
    {
        var (trainer, store) = NewTrainer(Guessers.ActivationPerturbation());
        var path = Path.Combine(Folder, "run.safetensors");
        var saved = new Dictionary<string, string>(Description) { ["rule"] = "adamw lr 0.003", ["data"] = "digits" };
        trainer.SaveCheckpoint(path, saved);
        var changed = new Dictionary<string, string>(Description) { ["guesser"] = "wt", ["rule"] = "adamw lr 0.01", ["epochs"] = "5" };
        var before = store.All.ToArray();
        var message = Assert.Throws<CheckpointMismatchException>(() => trainer.Resume(path, changed)).Message;
        Assert.Contains(path, message);
        Assert.Contains("guesser is 'ap' but this run's is 'wt'", message);
        Assert.Contains("rule is 'adamw lr 0.003' but this run's is 'adamw lr 0.01'", message);
        Assert.Contains("data is 'digits' but this run does not set it", message);
        Assert.Contains("epochs is missing from the checkpoint but this run's is '5'", message);
        Assert.Equal(before, store.All.ToArray());
    }

    /// <summary>With CosineEvery larger than an epoch, every epoch still measures once (on its last step when no
    /// other step was due), so no report has NaN cosines; the measured steps depend only on the step count, so a
    /// resumed run reports the same cosines bit for bit.</summary>
    [Fact]
    public void Cosines_are_measured_at_least_once_per_epoch_and_resume_reports_the_same()
    {
        var guesser = Guessers.ActivationPerturbation();
        var (straight, _) = NewTrainer(guesser, cosineEvery: 100);
        Assert.True(straight.StepsPerEpoch < 100);
        var reports = Enumerable.Range(0, 3).Select(e => straight.RunEpoch(e)).ToList();
        foreach (var report in reports)
        {
            Assert.True(double.IsFinite(report.GlobalCosine), $"epoch {report.Epoch}: global cosine {report.GlobalCosine}");
            Assert.All(report.SiteCosines, c => Assert.True(double.IsFinite(c), $"epoch {report.Epoch}: site cosine {c}"));
        }
        var (first, _) = NewTrainer(guesser, cosineEvery: 100);
        first.RunEpoch(0);
        var path = Path.Combine(Folder, "cos.safetensors");
        first.SaveCheckpoint(path, Description);
        var (resumed, _) = NewTrainer(guesser, cosineEvery: 100);
        resumed.Resume(path, Description);
        Assert.Equal(reports[1].GlobalCosine, resumed.RunEpoch(1).GlobalCosine);
        Assert.Equal(reports[2].SiteCosines.ToArray(), resumed.RunEpoch(2).SiteCosines.ToArray());
    }

    [Fact]
    public void Training_steps_allocate_nothing()
    {
        foreach (var guesser in new[] { Guessers.Backprop, Guessers.ActivationPerturbation(), Guessers.WeightTranspose(TangentMode.PerLayer), Guessers.ActivationMixing(), Guessers.SelfSharpening(), Guessers.Downstream(2), Guessers.DirectionalDescent(2) })
        {
            var store = ParameterStore.Initialize(new MlpSpec(64, [16, 16], 10, ElementwiseFunction.Relu).Build(), new CpuBackend(), 1);
            var estimator = guesser.Compile(store, 8);
            var optimizer = new Optimizer(Optimizers.AdamW(1e-3f), store);
            var digits = Digits.Load();
            var features = digits.Features.AsSpan(0, 8 * 64).ToArray();
            var labels = digits.Labels.AsSpan(0, 8).ToArray();
            void Step(int i)
            {
                estimator.SetBatch(features, labels);
                var (gradient, loss) = estimator.Estimate(new Random.RandomKey(1, (ulong)i));
                optimizer.Step(new UpdateInputs(i, loss, default), gradient);
            }
            Allocations.AssertNone(Step, warmUp: 2, steps: 4, guesser.Name);
        }
    }
}
