"""The benchmark CNN of the three-way comparison (issues 11 and 12), PyTorch side; torch_peer.py times its rows.

The same network on every side (ForwardAD: CnnBenchmarks.cs; TorchSharp: ForwardAD.TorchSharpPeer):
  input 32x32x3, batch 128 (issue 12), float32
  conv 32 3x3 pad 1 -> batch norm (affine, training mode: batch statistics, running averages updated) -> relu -> max pool 2
  conv 64 3x3 pad 1 -> batch norm -> relu -> max pool 2 -> flatten (4096) -> linear 10 -> softmax cross-entropy (mean)
Sites (where tangents enter, as ForwardAD's Model.Sites): the two conv outputs, the two batch-norm outputs (their affine
parameters make them sites) and the linear output. Initialisation: nn.Conv2d / nn.Linear / nn.BatchNorm2d defaults.

Layout: PyTorch's default is NCHW; channels_last (NHWC) reaches oneDNN's NHWC convolutions and pooling. Each row runs in
the layout measured faster for it (DEFAULT_LAYOUTS) unless torch_peer.py --cnn-layout names one.
"""
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

IMAGE, IN_CHANNELS, CHANNELS1, CHANNELS2, CLASSES, BATCH = 32, 3, 32, 64, 10, 128
SITES = 5  # conv1, bn1, conv2, bn2, linear
# The layout each row runs in unless --cnn-layout names one: the faster of NCHW and channels_last for that row, measured on
# the 2-core EPYC VM at one thread (2026-11-26, interleaved runs, minimum of 5-7 calls; the machine was shared, load 10-30,
# so the ratios were rough, but the ordering was the same in every run): channels_last was 1.3-1.7x faster for the forward,
# the forward_ad JVP, backprop and the backprop step (oneDNN's NHWC convolutions and a much faster NHWC max pool); the AP
# step was as fast or slightly faster in NCHW (its aten.convolution_backward weight gradients and forward_ad's batch-norm
# tangent arithmetic gain nothing from NHWC). Confirm on a quiet machine: torch_peer.py --cnn-layout nchw / nhwc.
DEFAULT_LAYOUTS = {"cnn_forward": "nhwc", "cnn_jvp_k1": "nhwc", "cnn_backprop": "nhwc", "cnn_backprop_adamw": "nhwc", "cnn_ap_adamw": "nchw"}
DEFAULT_LAYOUT = "nchw"  # PyTorch's own default, for callers that name no row


def memory_format(layout):
    return torch.channels_last if layout == "nhwc" else torch.contiguous_format


def make_params(requires_grad=False, layout=DEFAULT_LAYOUT):
    """[w1, b1, g1, be1, w2, b2, g2, be2, w3, b3] with PyTorch's default initialisation (U(+-1/sqrt(fan_in)) for the conv
    and linear weights and biases, gamma = 1, beta = 0), and the running statistics [mean1, var1, mean2, var2]."""
    fmt = memory_format(layout)

    def uniform(shape, fan_in):
        return torch.empty(shape).uniform_(-fan_in ** -0.5, fan_in ** -0.5)

    w1 = uniform((CHANNELS1, IN_CHANNELS, 3, 3), IN_CHANNELS * 9).contiguous(memory_format=fmt)
    w2 = uniform((CHANNELS2, CHANNELS1, 3, 3), CHANNELS1 * 9).contiguous(memory_format=fmt)
    flat = CHANNELS2 * (IMAGE // 4) ** 2
    params = [w1, uniform((CHANNELS1,), IN_CHANNELS * 9), torch.ones(CHANNELS1), torch.zeros(CHANNELS1),
              w2, uniform((CHANNELS2,), CHANNELS1 * 9), torch.ones(CHANNELS2), torch.zeros(CHANNELS2),
              uniform((CLASSES, flat), flat), uniform((CLASSES,), flat)]
    state = [torch.zeros(CHANNELS1), torch.ones(CHANNELS1), torch.zeros(CHANNELS2), torch.ones(CHANNELS2)]
    return [p.requires_grad_(requires_grad) for p in params], state


def make_batch(layout=DEFAULT_LAYOUT, batch=BATCH):
    x = torch.randn(batch, IN_CHANNELS, IMAGE, IMAGE).contiguous(memory_format=memory_format(layout))
    return x, torch.arange(batch) % CLASSES


def losses(params, state, x, y, site=None):
    """Per-example cross-entropy of the CNN. site(i, s, op_input) -> s, when given, sees every site's output s with the
    input of its op (for a batch-norm site, the op input is None: its parameter VJP needs the normalised value, which
    is (s - beta) / gamma) and returns what the network continues with (s plus a dual offset, for instance)."""
    w1, b1, g1, be1, w2, b2, g2, be2, w3, b3 = params
    site = site or (lambda i, s, op_input: s)
    h = x
    for i, (w, b, g, be, mean, var) in enumerate([(w1, b1, g1, be1, state[0], state[1]), (w2, b2, g2, be2, state[2], state[3])]):
        s = site(2 * i, F.conv2d(h, w, b, padding=1), h)
        s = site(2 * i + 1, F.batch_norm(s, mean, var, g, be, training=True, momentum=0.1, eps=1e-5), None)
        h = F.max_pool2d(torch.relu(s), 2)
    h = h.flatten(1)
    s = site(4, F.linear(h, w3, b3), h)
    return F.cross_entropy(s, y, reduction="none")


def tangent_shapes(batch=BATCH):
    half, quarter = IMAGE, IMAGE // 2
    return [(batch, CHANNELS1, half, half)] * 2 + [(batch, CHANNELS2, quarter, quarter)] * 2 + [(batch, CLASSES)]


def make_tangents(layout=DEFAULT_LAYOUT, batch=BATCH, dtype=torch.float32):
    """Per-example tangents on every site, in the layout of the site's output."""
    fmt = memory_format(layout)
    return [torch.randn(shape, dtype=dtype).contiguous(memory_format=fmt) if len(shape) == 4 else torch.randn(shape, dtype=dtype)
            for shape in tangent_shapes(batch)]


def randn_as(s):
    """N(0, I) shaped and laid out like s. For a channels_last s, the draw is made in NHWC order and viewed as NCHW:
    randn_like (normal_ on a non-contiguous tensor) takes a slow strided path, 7x slower here than a contiguous draw."""
    if s.dim() == 4 and not s.is_contiguous() and s.is_contiguous(memory_format=torch.channels_last):
        n, c, h, w = s.shape
        return torch.randn(n, h, w, c).permute(0, 3, 1, 2)
    return torch.randn_like(s)


def dual_site(tangents):
    """A site callback adding dual(0, u_i) to site i: the tangent of every later value gains the JVP of u_i."""
    return lambda i, s, op_input: s + fwAD.make_dual(torch.zeros_like(s), tangents[i])


def jvp_k1(params, state, x, y, tangents):
    """Per-example JVPs of the losses with the tangents on every site: one forward_ad dual pass (call under no_grad)."""
    with fwAD.dual_level():
        return fwAD.unpack_dual(losses(params, state, x, y, dual_site(tangents))).tangent


def parameter_vjp(params, site_inputs, site_outputs, cotangents):
    """The gradient of every parameter from (estimated) cotangents at the five sites, through each op's own parameter
    VJP: conv dW, db = aten.convolution_backward(g, x, W) (the weight-gradient convolution); batch norm
    dgamma = sum g * xhat, dbeta = sum g over (N, H, W) with xhat = (s - beta) / gamma; linear dW = g^T h, db = sum_b g."""
    w1, b1, g1, be1, w2, b2, g2, be2, w3, b3 = params
    grads = []
    for i, (w, g, be) in enumerate([(w1, g1, be1), (w2, g2, be2)]):
        cot = cotangents[2 * i]
        _, dw, db = torch.ops.aten.convolution_backward(cot, site_inputs[2 * i], w, [w.shape[0]], [1, 1], [1, 1], [1, 1],
                                                        False, [0, 0], 1, [False, True, True])
        cot_bn = cotangents[2 * i + 1]
        xhat = (site_outputs[2 * i + 1] - be[None, :, None, None]) / g[None, :, None, None]
        grads += [dw, db, (cot_bn * xhat).sum((0, 2, 3)), cot_bn.sum((0, 2, 3))]
    cot = cotangents[4]
    grads += [cot.t() @ site_inputs[4], cot.sum(0)]
    return grads


def ap_step(params, state, opt, x, y):
    """One activation-perturbation step written with forward_ad (the PyTorch side of our cnn_ap_adamw row): fresh
    tangents u_i ~ N(0, I) on every site, one dual pass, per-example JVPs d_b = dl_b / B, site estimates d_b u_{i,b},
    each turned into parameter gradients by its op's VJP (parameter_vjp), then the optimizer's step."""
    with torch.no_grad():
        tangents, inputs, outputs = [], [], []

        def site(i, s, op_input):
            u = randn_as(s)
            tangents.append(u)
            inputs.append(None if op_input is None else fwAD.unpack_dual(op_input).primal)
            outputs.append(fwAD.unpack_dual(s).primal)
            return s + fwAD.make_dual(torch.zeros_like(s), u)

        with fwAD.dual_level():
            d = fwAD.unpack_dual(losses(params, state, x, y, site)).tangent / x.shape[0]
        estimates = [u * d.view(-1, *([1] * (u.dim() - 1))) for u in tangents]
        for p, grad in zip(params, parameter_vjp(params, inputs, outputs, estimates)):
            p.grad = grad
    opt.step()


def check():
    """Correctness guard of the PyTorch CNN (float64, batch 4, both layouts): (1) parameter_vjp of the exact site
    cotangents (autograd's gradient of the mean loss with respect to zero offsets on the sites) equals autograd's
    parameter gradient, so the AP step's update path is backprop's when its estimate is exact; (2) the forward_ad
    per-example JVP equals float64 central differences of the losses along the tangents. Returns the worst errors."""
    worst = {}
    for layout in ["nchw", "nhwc"]:
        torch.manual_seed(1)
        params, state = make_params(requires_grad=True, layout=layout)
        params = [p.detach().double().requires_grad_(True) for p in params]
        params[2].data += 0.5 * torch.rand(CHANNELS1, dtype=torch.float64)  # gamma off 1, beta off 0: every term counts
        params[3].data += 0.1 * torch.randn(CHANNELS1, dtype=torch.float64)
        x, y = make_batch(layout, batch=4)
        x = x.double()
        fresh_state = lambda: [s.double() for s in state]
        offsets = [torch.zeros(shape, dtype=torch.float64, requires_grad=True) for shape in tangent_shapes(4)]
        inputs, outputs = [], []

        def record(i, s, op_input):
            inputs.append(None if op_input is None else op_input.detach())
            outputs.append(s.detach())
            return s + offsets[i]

        loss = losses(params, fresh_state(), x, y, record).mean()
        grads = torch.autograd.grad(loss, params + offsets)
        via_vjp = parameter_vjp([p.detach() for p in params], inputs, outputs, grads[len(params):])
        worst[f"{layout} parameter VJP vs autograd (relative)"] = max(
            ((a - b).abs().max() / b.abs().max()).item() for a, b in zip(via_vjp, grads[:len(params)]))
        worst[f"{layout} gradient norm: VJP path / autograd"] = (
            torch.sqrt(sum((a * a).sum() for a in via_vjp)) / torch.sqrt(sum((b * b).sum() for b in grads[:len(params)]))).item()

        detached = [p.detach() for p in params]
        tangents = make_tangents(layout, batch=4, dtype=torch.float64)
        with torch.no_grad():
            jvp = jvp_k1(detached, fresh_state(), x, y, tangents)
            eps = 1e-6
            shifted = lambda sign: losses(detached, fresh_state(), x, y, lambda i, s, _: s + sign * eps * tangents[i])
            central = (shifted(1) - shifted(-1)) / (2 * eps)
        worst[f"{layout} forward_ad JVP vs central differences (relative)"] = ((jvp - central).abs().max() / (1 + jvp.abs().max())).item()
    return worst
