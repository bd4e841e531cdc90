// Per-example losses. Each saves e = ∂ℓ/∂prediction for the rules (JVP ℓ̇ = e·ṗ, VJP p̄ = e·ℓ̄).
#include "common.cuh"

// loss[r] = logsumexp(z_r) − z_r[label_r]; error[r, :] = softmax(z_r) − onehot(label_r). One thread per row.
extern "C" __global__ void softmax_cross_entropy(const float* logits, const float* labels, float* loss, float* error, long long rows, long long classes)
{
    for (long long r = global_index(); r < rows; r += grid_stride())
    {
        const float* z = logits + r * classes;
        float* e = error + r * classes;
        float max = z[0];
        for (long long j = 1; j < classes; j++) max = fmaxf(max, z[j]);
        float sum = 0.0f;
        for (long long j = 0; j < classes; j++) { e[j] = expf(z[j] - max); sum += e[j]; }
        for (long long j = 0; j < classes; j++) e[j] /= sum;
        int label = (int)labels[r];
        loss[r] = logf(sum) + max - z[label];
        e[label] -= 1.0f;
    }
}

// loss[r] = (1/D) Σ_j (p − t)²; error = 2(p − t)/D.
extern "C" __global__ void squared_error(const float* prediction, const float* target, float* loss, float* error, long long rows, long long width)
{
    for (long long r = global_index(); r < rows; r += grid_stride())
    {
        float sum = 0.0f;
        for (long long j = 0; j < width; j++)
        {
            float d = prediction[r * width + j] - target[r * width + j];
            sum = fmaf(d, d, sum);
            error[r * width + j] = d * (2.0f / (float)width);
        }
        loss[r] = sum / (float)width;
    }
}
