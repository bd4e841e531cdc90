using System.Buffers.Binary;
using System.IO.Compression;
using ForwardAD.Data;
using ForwardAD.Graph;
using ForwardAD.Tensors;

namespace ForwardAD.Tests;

/// <summary>
/// CnnSpec (issue 12, models and data): the grammar and its canonical text, every error it reports, the ready-made nets'
/// shapes and parameter counts, and the loaders' channels-last image shapes (IDX, CIFAR, digits, Fashion-MNIST).
/// </summary>
public sealed class CnnSpecTests() : TemporaryFolderTests("forwardad-cnnspec-")
{
    private static readonly Shape Grey28 = new(28, 28, 1), Colour32 = new(32, 32, 3);

    // ---- grammar -------------------------------------------------------------------------------

    /// <summary>Spec text in any accepted form → its canonical text: lower case, defaults left out (k3's padding 1, a pool's
    /// stride = kernel, b1), options in the order k s p g b, ',' after a pooling layer and before gap/flat/fc, '-' elsewhere.</summary>
    [Theory]
    [InlineData("c32k3-bn-relu-p2,c64k3-bn-relu-p2,gap", "c32k3-bn-relu-p2,c64k3-bn-relu-p2,gap")]
    [InlineData("C32K3-BN-RELU-P2-c64k3p1-bn-relu-p2s2-GAP", "c32k3-bn-relu-p2,c64k3-bn-relu-p2,gap")]
    [InlineData("c8-relu,flat", "c8k3-relu,flat")]
    [InlineData("c2k1-c8g2s2k5b0p0-bnf0-tanh-a3p1s2,bnf-gelu-flat-fc32-relu", "c2k1-c8k5s2p0g2b0-bnf0-tanh-a3s2p1,bnf-gelu,flat,fc32-relu")]
    [InlineData("c8k4-bn0-relu-c8k4p2b1-p3s1,gap", "c8k4-bn0-relu-c8k4p2-p3s1,gap")]
    [InlineData(" c4k1 , gap ", "c4k1,gap")]
    public void Specs_read_back_from_their_canonical_text(string text, string canonical)
    {
        var spec = CnnSpec.Parse(text, Grey28, 10);
        Assert.Equal(canonical, spec.ToString());
        var again = CnnSpec.Parse(spec.ToString(), Grey28, 10);
        Assert.Equal(canonical, again.ToString());
        Assert.Equal(spec.Layers.Length, again.Layers.Length);
        Assert.Equal(spec.Shapes(), again.Shapes());
        for (int i = 0; i < spec.Layers.Length; i++) Assert.Equal(spec.Layers[i].ToString(), again.Layers[i].ToString());
    }

    [Fact]
    public void Parsed_layers_carry_their_options_and_defaults()
    {
        var layers = CnnSpec.ParseLayers("c8k5s2g2b0-p3-a3s2p1-bnf0-fc7");
        var conv = Assert.IsType<CnnLayer.Conv>(layers[0]);
        Assert.Equal((8, 5, 2, 2, 2, false), (conv.Channels, conv.Kernel, conv.Stride, conv.EffectivePadding, conv.Groups, conv.Bias));
        Assert.Equal(0, new CnnLayer.Conv(4, Kernel: 2).EffectivePadding); // even kernels: no symmetric padding keeps the size
        var max = Assert.IsType<CnnLayer.Pool>(layers[1]);
        Assert.Equal((3, 3, 0, false), (max.Kernel, max.EffectiveStride, max.Padding, max.Average));
        var avg = Assert.IsType<CnnLayer.Pool>(layers[2]);
        Assert.Equal((3, 2, 1, true), (avg.Kernel, avg.EffectiveStride, avg.Padding, avg.Average));
        Assert.Equal(new CnnLayer.BatchNorm(Affine: false, FrozenStatistics: true), layers[3]);
        Assert.Equal(new CnnLayer.Dense(7), layers[4]);
    }

    /// <summary>"Same" padding for odd kernels: H × W kept at stride 1, ⌈H/S⌉ at stride S; even kernels shrink by K − 1.</summary>
    [Fact]
    public void Default_padding_keeps_the_size_at_stride_1_and_gives_the_ceiling_at_stride_2()
    {
        var spec = CnnSpec.Parse("c4k3-c4k5-c4k3s2-c4k4-c4k7s2,gap", new Shape(9, 7, 2), 3);
        Assert.Equal([new Shape(9, 7, 4), new Shape(9, 7, 4), new Shape(5, 4, 4), new Shape(2, 1, 4), new Shape(1, 1, 4), new Shape(4)], spec.Shapes());
    }

    /// <summary>Syntax errors name the spec, the layer's position and token, say what is wrong, and show the grammar.</summary>
    [Theory]
    [InlineData("c32k3-x32-gap", "layer 2 'x32': not a layer of the grammar")]
    [InlineData("c32q3,gap", "layer 1 'c32q3': unknown option 'q'; a convolution takes k, s, p, g and b0")]
    [InlineData("c32k3k5,gap", "layer 1 'c32k3k5': option 'k' is given twice")]
    [InlineData("c32k,gap", "layer 1 'c32k': option 'k' needs a number")]
    [InlineData("c8-p2g2,gap", "layer 2 'p2g2': unknown option 'g'; pooling takes s and p")]
    [InlineData("c8--relu,gap", "layer 2 is empty")]
    [InlineData("c8,gap,", "layer 3 is empty")]
    [InlineData("fc,gap", "layer 1 'fc': fc needs a unit count, as in fc128")]
    [InlineData("gap-fc12x", "layer 2 'fc12x': unexpected 'x' after fc12")]
    [InlineData("c8b2,gap", "layer 1 'c8b2': b2: the bias option is b0 (no bias) or b1")]
    [InlineData("c99999999999,gap", "layer 1 'c99999999999': 99999999999 is too large")]
    [InlineData("conv,gap", "layer 1 'conv': not a layer of the grammar")]
    [InlineData("  ", "The CNN spec is empty")]
    public void Bad_tokens_are_named_with_the_grammar(string text, string expected)
    {
        var error = Assert.Throws<FormatException>(() => CnnSpec.Parse(text, Grey28, 10));
        Assert.Contains(expected, error.Message);
        Assert.Contains(CnnSpec.Grammar, error.Message);
    }

    /// <summary>Size errors name the layer, its position, its input shape and what does not fit.</summary>
    [Theory]
    [InlineData("p2-p2-p2-p2,gap", "layer 4 'p2' (input [1, 1, 1]): the 2×2 window does not fit the 1×1×1 feature map (padding 0): the image vanishes")]
    [InlineData("c4k9p0,gap", "layer 1 'c4k9p0' (input [8, 8, 1]): the 9×9 kernel does not fit the 8×8×1 feature map padded by 0: the image vanishes")]
    [InlineData("c0k3,gap", "layer 1 'c0k3' (input [8, 8, 1]): a convolution needs at least 1 output channel; got 0")]
    [InlineData("fc0", "layer 1 'fc0' (input [8, 8, 1]): a dense layer needs at least 1 unit; got 0")]
    [InlineData("c6k3-c9k3g2,gap", "layer 2 'c9k3g2' (input [8, 8, 6]): groups 2 must divide both the 6 input channels and the 9 output channels")]
    [InlineData("c4k3g2,gap", "layer 1 'c4k3g2' (input [8, 8, 1]): groups 2 must divide both the 1 input channels")]
    [InlineData("c4k3g0,gap", "a convolution needs kernel ≥ 1, stride ≥ 1, padding ≥ 0 and groups ≥ 1; got kernel 3, stride 1, padding 1, groups 0")]
    [InlineData("p3p2,gap", "max pooling needs kernel ≥ 1, stride ≥ 1 and 0 ≤ padding ≤ kernel/2; got kernel 3, stride 3, padding 2")]
    [InlineData("gap-c4k3", "layer 2 'c4k3' (input [1]): a convolution needs an image [H, W, C] (channels last), but its input is a vector [1]")]
    [InlineData("c4k3-fc8-relu", "layer 2 'fc8' (input [8, 8, 4]): a dense layer needs a vector, but its input is a 8×8×4 feature map [8, 8, 4]: put gap or flat before it")]
    [InlineData("c4k3-bn-relu", "the last layer 'relu' leaves a feature map [8, 8, 4], but the classifier (added after the last layer) needs a vector: end with gap or flat")]
    [InlineData("c4k3,flat,fc10", "the last layer 'fc10' is a hidden dense layer without an activation, so it and the classifier (added automatically, to the 10 classes) would be two linear maps in a row")]
    [InlineData("gap,gap", "layer 2 'gap' (input [1]): global average pooling needs an image")]
    public void Layers_that_do_not_fit_are_named_with_the_sizes(string text, string expected)
    {
        var error = Assert.Throws<ArgumentException>(() => CnnSpec.Parse(text, new Shape(8, 8, 1), 10));
        Assert.Contains(expected, error.Message);
        Assert.Contains("CNN spec '", error.Message);
    }

    [Fact]
    public void Inputs_and_class_counts_are_checked()
    {
        Assert.Contains("channels-last image input [H, W, C]", Assert.Throws<ArgumentException>(() => CnnSpec.Parse("gap", new Shape(64), 10)).Message);
        Assert.Contains("at least 2 classes", Assert.Throws<ArgumentException>(() => CnnSpec.Parse("gap", Grey28, 1)).Message);
        Assert.Contains("at least one layer", Assert.Throws<ArgumentException>(() => new CnnSpec(Grey28, [], 10).Build()).Message);
        Assert.Contains("Ready-made: cnn-small, vgg-small, alexnet-small", Assert.Throws<ArgumentException>(() => CnnSpec.Named("resnet", Grey28, 10)).Message);
    }

    // ---- models --------------------------------------------------------------------------------

    /// <summary>The built model: input "x" (not differentiable) of the image shape, labels "y", loss "loss", logits as the
    /// output; nodes named by kind and number; sites at convolutions, affine batch norms, dense layers and the classifier.</summary>
    [Fact]
    public void A_spec_builds_the_model_it_describes()
    {
        var model = CnnSpec.Parse("c4k3-bn-relu-p2,c6k3g2-bn0-tanh-a2,flat,fc5-gelu", new Shape(8, 8, 2), 3).Build();
        Assert.Equal(new Shape(8, 8, 2), model["x"].Shape);
        Assert.False(((InputOp)model["x"].Op).Differentiable);
        Assert.IsType<ClassLabelsOp>(model["y"].Op);
        Assert.Equal("loss", model.Loss.Name);
        Assert.Equal("classifier", model.Output.Name);
        Assert.Equal(new Shape(3), model.Output.Shape);
        Assert.Equal(["conv1", "bn1", "conv2", "fc1", "classifier"], model.Sites.Select(s => s.Name));
        foreach (var name in new[] { "relu1", "maxpool1", "tanh1", "avgpool1", "flatten1", "gelu1", "bn2" }) Assert.Equal(name, model[name].Name);
        Assert.Equal(new Shape(2, 2, 6), model["avgpool1"].Shape);
        // conv1 4·3·3·2 + 4, bn1 γ, β 2·4, conv2 (6·3·3·2 + 6), bn0 none, fc1 24·5 + 5, classifier 5·3 + 3.
        Assert.Equal(4 * 9 * 2 + 4 + 8 + (6 * 9 * 2 + 6) + (24 * 5 + 5) + (5 * 3 + 3), model.ParameterCount);
        Assert.Equal(2 * (4 + 6), model.States.Sum(s => s.Shape.ElementCount)); // running mean and variance per batch norm
    }

    [Fact]
    public void Frozen_batch_norm_is_built_with_frozen_statistics()
    {
        var model = CnnSpec.Parse("c4k3-bnf-relu,gap", new Shape(4, 4, 1), 2).Build();
        Assert.True(((BatchNormOp)model["bn1"].Op).FrozenStatistics);
        Assert.False(((BatchNormOp)CnnSpec.Parse("c4k3-bn-relu,gap", new Shape(4, 4, 1), 2).Build()["bn1"].Op).FrozenStatistics);
    }

    /// <summary>Each ready-made net on the input it is made for: the shape after every block and the parameter count,
    /// layer by layer (a conv: Cout·K²·Cin + Cout; a batch norm: 2·C; a dense layer: out·in + out).</summary>
    [Theory]
    [InlineData("cnn-small", 28, 1, new[] { 7, 7, 32 }, 64,
        (16 * 9 * 1 + 16) + 32 + (32 * 9 * 16 + 32) + 64 + (64 * 1568 + 64) + (10 * 64 + 10))]
    [InlineData("vgg-small", 32, 3, new[] { 4, 4, 64 }, 128,
        (16 * 9 * 3 + 16) + 32 + (16 * 9 * 16 + 16) + 32 + (32 * 9 * 16 + 32) + 64 + (32 * 9 * 32 + 32) + 64
        + (64 * 9 * 32 + 64) + 128 + (64 * 9 * 64 + 64) + 128 + (128 * 1024 + 128) + (10 * 128 + 10))]
    [InlineData("alexnet-small", 32, 3, new[] { 3, 3, 48 }, 96,
        (24 * 25 * 3 + 24) + 48 + (48 * 25 * 24 + 48) + 96 + (64 * 9 * 48 + 64) + 128 + (48 * 9 * 64 + 48) + 96
        + (48 * 9 * 48 + 48) + 96 + (192 * 432 + 192) + (96 * 192 + 96) + (10 * 96 + 10))]
    public void Ready_made_nets_have_the_expected_shapes_and_parameter_counts(string name, int size, int channels, int[] lastMap, int features, int parameters)
    {
        var spec = CnnSpec.Named(name, new Shape(size, size, channels), 10);
        var shapes = spec.Shapes();
        Assert.Equal(new Shape(lastMap), shapes[spec.Layers.IndexOf(spec.Layers.First(l => l is CnnLayer.Flatten)) - 1]);
        Assert.Equal(new Shape(features), shapes[^1]);
        var model = spec.Build();
        Assert.Equal(new Shape(10), model.Output.Shape);
        Assert.Equal(parameters, model.ParameterCount);
        Assert.Equal(CnnSpec.ReadyMade.Single(r => r.Name == name).Layers, spec.ToString()); // defined in canonical form
    }

    // ---- data: channels-last images --------------------------------------------------------------

    private string Write(string name, byte[] bytes)
    {
        var path = Path.Combine(Folder, name);
        File.WriteAllBytes(path, bytes);
        return path;
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

    [Fact]
    public void Idx_grey_images_are_channels_last_images_and_vectors_stay_vectors()
    {
        var labels = Write("l.idx", Idx([2], [1, 0]));
        var images = IdxDataset.Load(Write("i.idx", Idx([2, 3, 2], new byte[12])), labels);
        Assert.Equal(new Shape(3, 2, 1), images.FeatureShape);
        Assert.Equal(new Shape(5), IdxDataset.Load(Write("v.idx", Idx([2, 5], new byte[10])), labels).FeatureShape);
        Assert.Equal(new Shape(2, 2, 3), IdxDataset.Load(Write("c.idx", Idx([2, 2, 2, 3], new byte[24])), labels).FeatureShape);
    }

    /// <summary>CIFAR's records are channel-major (plane c, row y, column x); the loader gives channels last:
    /// feature (y·32 + x)·3 + c = byte c·1024 + y·32 + x. Each pixel byte here encodes its own (c, y, x).</summary>
    [Fact]
    public void Cifar_pixels_come_out_channels_last()
    {
        var record = new byte[1 + 3072];
        record[0] = 7;
        for (int c = 0; c < 3; c++)
            for (int y = 0; y < 32; y++)
                for (int x = 0; x < 32; x++) record[1 + c * 1024 + y * 32 + x] = (byte)((c * 37 + y * 5 + x * 3) % 256);
        var data = CifarDataset.Load([Write("data_batch_1.bin", record)]);
        Assert.Equal(new Shape(32, 32, 3), data.FeatureShape);
        for (int y = 0; y < 32; y++)
            for (int x = 0; x < 32; x++)
                for (int c = 0; c < 3; c++)
                    Assert.Equal((c * 37 + y * 5 + x * 3) % 256 / 255f, data.Features[(y * 32 + x) * 3 + c]);
    }

    [Fact]
    public void Digits_are_8_by_8_grey_images()
    {
        var digits = Digits.Load();
        Assert.Equal(new Shape(8, 8, 1), digits.FeatureShape);
        Assert.Equal(new Shape(8, 8, 1), digits.Split(0.2, 1).Test.FeatureShape);
        Assert.Equal(new Shape(10), CnnSpec.Named("cnn-small", digits.FeatureShape, digits.Classes).Build().Output.Shape);
    }

    [Fact]
    public void Fashion_mnist_loads_as_28_by_28_grey_images_when_installed()
    {
        Assert.SkipUnless(FashionMnist.IsInstalled(), $"Fashion-MNIST is not installed in {FashionMnist.DefaultDirectory} (sudo apt-get install dataset-fashion-mnist)");
        var test = FashionMnist.Load(test: true);
        Assert.Equal(new Shape(28, 28, 1), test.FeatureShape);
        Assert.Equal((10_000, 10), (test.Count, test.Classes));
        Assert.All(test.Labels, l => Assert.InRange(l, 0, 9));
        Assert.InRange(test.Features.Max(), 0.9f, 1f); // pixels scaled to [0, 1], some near white
        Assert.Equal(0f, test.Features.Min());
        var train = FashionMnist.Load();
        Assert.Equal((60_000, new Shape(28, 28, 1)), (train.Count, train.FeatureShape));
    }

    [Fact]
    public void Missing_fashion_mnist_files_name_the_file_and_the_install_line()
    {
        var error = Assert.Throws<FileNotFoundException>(() => FashionMnist.Load(directory: Folder));
        Assert.Contains(Path.Combine(Folder, "train-images-idx3-ubyte.gz"), error.Message);
        Assert.Contains("sudo apt-get install dataset-fashion-mnist", error.Message);
        Assert.False(FashionMnist.IsInstalled(Folder));
    }

    /// <summary>A folder of stand-in Fashion-MNIST files (2 training, 1 test image of 4×4) loads by the same names.</summary>
    [Fact]
    public void Fashion_mnist_loads_from_any_folder_with_the_original_file_names()
    {
        foreach (var (prefix, count) in new[] { ("train", 2), ("t10k", 1) })
        {
            Write($"{prefix}-images-idx3-ubyte.gz", Gzip(Idx([count, 4, 4], new byte[count * 16])));
            Write($"{prefix}-labels-idx1-ubyte.gz", Gzip(Idx([count], new byte[count])));
        }
        Assert.True(FashionMnist.IsInstalled(Folder));
        var train = FashionMnist.Load(directory: Folder);
        Assert.Equal(("fashion-mnist", 2, new Shape(4, 4, 1)), (train.Name, train.Count, train.FeatureShape));
        Assert.Equal(1, FashionMnist.Load(test: true, directory: Folder).Count);
    }

    internal static byte[] Gzip(byte[] bytes)
    {
        using var memory = new MemoryStream();
        using (var gz = new GZipStream(memory, CompressionLevel.Fastest)) gz.Write(bytes);
        return memory.ToArray();
    }
}
