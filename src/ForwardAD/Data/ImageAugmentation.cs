using ForwardAD.Random;
using ForwardAD.Tensors;

namespace ForwardAD.Data;

/// <summary>
/// Training-time augmentation of channels-last images [H, W, C] (grey [H, W] as C = 1) in a batch buffer, in place: a random crop of the image
/// padded by <see cref="Padding"/> zeros on every side (the crop is H × W, its corner uniform over the (2p + 1)² offsets),
/// then, with <see cref="HorizontalFlip"/>, a left–right mirror with probability ½ — the CIFAR-10 recipe Ren et al. (2022)
/// train with. Example b of a batch draws its offsets and flip from the Philox stream of <c>key</c> at counter 4b, so the
/// same key gives the same batch on every machine; the trainer keys it by (seed, step), so a resumed run augments as the
/// uninterrupted one did. Allocation-free.
/// </summary>
public sealed record ImageAugmentation(int Padding = 4, bool HorizontalFlip = true)
{
    /// <summary>Checks that the augmentation fits images of <paramref name="shape"/>; throws naming the fix.</summary>
    public void Validate(Shape shape)
    {
        if (shape.Rank is not (2 or 3))
            throw new ArgumentException($"Augmentation (random crop and flip) needs channels-last images [H, W, C] (or grey [H, W]); the data's features are {shape}. Drop --augment for vector data.");
        if (Padding < 0 || Padding >= Math.Min(shape[0], shape[1]))
            throw new ArgumentException($"The crop padding must be in [0, {Math.Min(shape[0], shape[1]) - 1}] for {shape[0]}×{shape[1]} images; got {Padding}.");
    }

    /// <summary>Augments every image of <paramref name="images"/> (examples of <paramref name="shape"/> after each other);
    /// <paramref name="scratch"/> holds one image. <paramref name="firstExample"/>: the batch index of the first image (a
    /// data-parallel rank's share starts inside the batch; each example draws at counter 4·(its index in the batch)).</summary>
    public void Apply(Span<float> images, Shape shape, RandomKey key, Span<float> scratch, int firstExample = 0)
    {
        Validate(shape);
        int height = shape[0], width = shape[1], channels = shape.Rank == 3 ? shape[2] : 1, size = shape.ElementCount;
        if (scratch.Length < size) throw new ArgumentException($"The scratch holds {scratch.Length} floats; one image needs {size}.", nameof(scratch));
        Span<float> u = stackalloc float[3];
        int examples = images.Length / size, span = 2 * Padding + 1;
        for (int b = 0; b < examples; b++)
        {
            RandomFill.Uniform(key, 4L * (firstExample + b), 0f, 1f, u);
            // Offsets in [−p, p]: output pixel (y, x) reads input (y + dy, x + dx), zero outside.
            int dy = Math.Min((int)(u[0] * span), span - 1) - Padding, dx = Math.Min((int)(u[1] * span), span - 1) - Padding;
            bool flip = HorizontalFlip && u[2] < 0.5f;
            var image = images.Slice(b * size, size);
            image.CopyTo(scratch);
            for (int y = 0; y < height; y++)
                for (int x = 0; x < width; x++)
                {
                    var target = image.Slice((y * width + x) * channels, channels);
                    int sy = y + dy, sx = (flip ? width - 1 - x : x) + dx;
                    if (sy < 0 || sy >= height || sx < 0 || sx >= width) target.Clear();
                    else scratch.Slice((sy * width + sx) * channels, channels).CopyTo(target);
                }
        }
    }

    /// <summary>A short tag for reports: <c>crop-pad4+flip</c> (padding p, <c>+flip</c> with horizontal flips).</summary>
    public override string ToString() => $"crop-pad{Padding}{(HorizontalFlip ? "+flip" : "")}";
}
