using FsCheck;
using FsCheck.Fluent;

namespace ForwardAD.Tests;

/// <summary>
/// FsCheck runs with a fixed replay seed, so every property sees the same cases on every run: statistical
/// properties keep their stated false-failure probability instead of being re-rolled each CI run.
/// </summary>
internal static class PropertyConfig
{
    /// <summary>The Replay of every FsCheck.Xunit [Property] class ("seed,gamma"; gamma odd): fixed, as <see cref="Fixed"/>'s seed.</summary>
    public const string Replay = "20241122,7919";

    public static Config Fixed(int maxTest = 100, ulong seed = 20241122) =>
        Config.QuickThrowOnFailure.WithMaxTest(maxTest).WithQuietOnSuccess(true)
            .WithReplay(new Replay(new Rnd(seed), null));

    public static void CheckFixed(this Property property, int maxTest = 100) => Check.One(Fixed(maxTest), property);
}
