using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Graph;
using ForwardAD.Random;
using ForwardAD.Tensors;

namespace ForwardAD.Tests;

/// <summary>
/// Inputs read from the caller's buffer (<see cref="PlanOptions.BoundInputs"/>, <see cref="Plan.BindInput"/>): the same
/// bits as a copied batch in every kind of pass, each batch read from where it was bound, no memory of the plan's own for
/// it, nothing allocated per step, and clear refusals.
/// </summary>
public sealed class BoundInputTests
{
    private static Problem Problem(string name, int batch) => name switch
    {
        "mlp" => Tests.Problem.From(MlpSpec.Uniform(12, 4, 16, 4, ElementwiseFunction.Relu).Build(), 5, batch),
        _ => Tests.Problem.From(CnnSpec.Parse("c8k3-bn-relu-p2,c8k3s2-bn-tanh,flat,fc16-gelu", new Shape(12, 12, 3), 5).Build(), 5, batch),
    };

    /// <summary>A plan that reads x from a bound buffer, against the same plan copying x in: forward values, loss,
    /// gradients and tangents are the same bits, for two batches in turn (the second bound in place of the first), then a
    /// third written into the bound buffer without rebinding; the plan allocates exactly x's floats less. Plans: gradients
    /// and tangents keeping every buffer, backprop reusing buffers, and the fused JVP reusing buffers.</summary>
    [Theory]
    [InlineData("mlp", "keep")]
    [InlineData("mlp", "backprop")]
    [InlineData("mlp", "jvp")]
    [InlineData("cnn", "keep")]
    [InlineData("cnn", "backprop")]
    [InlineData("cnn", "jvp")]
    public void A_bound_input_gives_the_bits_of_a_copied_one(string name, string kind)
    {
        const int batch = 5;
        var problem = Problem(name, batch);
        var model = problem.Model;
        var x = model["x"];
        var backend = problem.Parameters.Backend;
        var seeds = model.Sites.Select(s => new TangentSeed(s.Node, new RandomKey(3, (ulong)s.Node.Id))).ToArray();
        bool gradients = kind != "jvp", tangents = kind != "backprop", reuse = kind != "keep";
        PlanOptions Options(bool bound) => new(batch)
        {
            Gradients = gradients,
            ReuseBuffers = reuse,
            Seeds = tangents ? [.. seeds] : [],
            BoundInputs = bound ? [x] : [],
        };
        var copied = problem.Compile(Options(false));
        var boundPlan = Plan.Compile(problem.Parameters, Options(true));
        foreach (var (id, values) in problem.Inputs)
            if (id != x.Id) boundPlan.SetInput(model.Nodes[id], values);

        var batches = new[] { problem.Inputs[x.Id], Tests.Problem.Normal(11, x.ElementCount(batch), 1f), Tests.Problem.Normal(12, x.ElementCount(batch), 1f) };
        var buffers = batches.Take(2).Select(values =>
        {
            var buffer = backend.Allocate(values.Length);
            backend.CopyFromHost(values, new View(buffer));
            return buffer;
        }).ToArray();
        for (int i = 0; i < batches.Length; i++)
        {
            copied.SetInput(x, batches[i]);
            if (i < 2) boundPlan.BindInput(x, new View(buffers[i]));
            else backend.CopyFromHost(batches[i], new View(buffers[1])); // the bound buffer rewritten in place
            foreach (var plan in new[] { copied, boundPlan })
            {
                if (tangents) plan.ForwardJvp();
                else plan.Forward();
                if (gradients) plan.Backward();
            }
            Assert.Equal(copied.MeanLoss(), boundPlan.MeanLoss());
            Assert.True(Bits.Same(copied.Value(model.Output).ToArray(), boundPlan.Value(model.Output).ToArray()), $"{name}, batch {i}: outputs differ");
            if (gradients)
                Assert.True(Bits.Same(copied.ParameterGradients.ToArray(), boundPlan.ParameterGradients.ToArray()), $"{name}, batch {i}: gradients differ");
            if (tangents)
                Assert.True(Bits.Same(copied.Tangent(model.Output).ToArray(), boundPlan.Tangent(model.Output).ToArray()), $"{name}, batch {i}: tangents differ");
        }
        Assert.Equal(batches[2], new View(buffers[1]).ToArray()); // read, never written
        Assert.Equal(copied.AllocatedBytes - (long)x.ElementCount(batch) * sizeof(float), boundPlan.AllocatedBytes);
    }

    /// <summary>Binding and running a step allocates nothing once warm, with the binding alternating between two buffers.</summary>
    [Fact]
    public void Binding_and_stepping_allocate_nothing()
    {
        const int batch = 4;
        var problem = Problem("mlp", batch);
        var x = problem.Model["x"];
        var plan = Plan.Compile(problem.Parameters, new PlanOptions(batch) { Gradients = true, ReuseBuffers = true, BoundInputs = [x] });
        plan.SetInput(problem.Model["y"], problem.Inputs[problem.Model["y"].Id]);
        var buffers = new[] { new View(problem.Parameters.Backend.Allocate(x.ElementCount(batch))), new View(problem.Parameters.Backend.Allocate(x.ElementCount(batch))) };
        Allocations.AssertNone(i =>
        {
            plan.BindInput(x, buffers[i % 2]);
            plan.Forward();
            plan.Backward();
        }, warmUp: 3, steps: 20, "a step with a bound input");
    }

    /// <summary>Each misuse is refused with the fix named: labels bound, an input bound twice, a node of another model, a run
    /// with nothing bound, copying into a bound input, binding labels or an input that was not compiled as bound, a view of
    /// the wrong length, an empty one, one on another backend or in memory the plan writes (its gradients, the
    /// parameters), and the pull-backs and parameter updates that would keep views.</summary>
    [Fact]
    public void Misuse_is_refused_with_the_fix_named()
    {
        const int batch = 3;
        var problem = Problem("mlp", batch);
        var model = problem.Model;
        var (x, y) = (model["x"], model["y"]);
        var store = problem.Parameters;
        Assert.Contains("labels or tokens", Assert.Throws<ArgumentException>(() => Plan.Compile(store, new PlanOptions(batch) { BoundInputs = [y] })).Message);
        Assert.Contains("bound twice", Assert.Throws<ArgumentException>(() => Plan.Compile(store, new PlanOptions(batch) { BoundInputs = [x, x] })).Message);
        var other = Problem("cnn", batch).Model["x"];
        Assert.Contains("not a node of this model", Assert.Throws<ArgumentException>(() => Plan.Compile(store, new PlanOptions(batch) { BoundInputs = [other] })).Message);

        var plan = Plan.Compile(store, new PlanOptions(batch) { Gradients = true, SaveDerivatives = true, BoundInputs = [x] });
        plan.SetInput(y, problem.Inputs[y.Id]);
        Assert.Contains("call BindInput first", Assert.Throws<InvalidOperationException>(plan.Forward).Message);
        Assert.Contains("call BindInput first", Assert.Throws<InvalidOperationException>(plan.ForwardJvp).Message);
        Assert.Contains("write the batch into that buffer", Assert.Throws<InvalidOperationException>(() => plan.SetInput(x, problem.Inputs[x.Id])).Message);
        Assert.Contains("copy them in with SetInput", Assert.Throws<ArgumentException>(() => plan.BindInput(y, new View(store.Backend.Allocate(batch)))).Message);
        var unbound = Plan.Compile(store, new PlanOptions(batch));
        Assert.Contains("list it in PlanOptions.BoundInputs", Assert.Throws<ArgumentException>(() => unbound.BindInput(x, new View(store.Backend.Allocate(x.ElementCount(batch))))).Message);
        Assert.Contains("memory this plan writes", Assert.Throws<ArgumentException>(() => plan.BindInput(x, plan.ParameterGradients.Slice(0, x.ElementCount(batch)))).Message);
        Assert.Contains("memory this plan writes", Assert.Throws<ArgumentException>(() => plan.BindInput(x, store.All.Slice(0, x.ElementCount(batch)))).Message);
        Assert.Contains("expects", Assert.Throws<ArgumentException>(() => plan.BindInput(x, new View(store.Backend.Allocate(x.ElementCount(batch) - 1)))).Message);
        Assert.Contains("empty", Assert.Throws<ArgumentException>(() => plan.BindInput(x, View.Empty)).Message);
        Assert.Contains("allocate it with the plan's backend", Assert.Throws<ArgumentException>(() => plan.BindInput(x, new View(new CpuBackend().Allocate(x.ElementCount(batch))))).Message);
        var site = model.Sites[0].Node;
        Assert.Contains("BoundInputs", Assert.Throws<InvalidOperationException>(() => plan.CreatePullBack([model.Sites[1].Node], site)).Message);
        Assert.Contains("BoundInputs", Assert.Throws<InvalidOperationException>(() => plan.CreateParameterUpdate([site], new View(store.Backend.Allocate(store.All.Length)))).Message);
    }
}
