// On the GPU machine: bash .gpu/run ForwardAD.GpuBenchmarks (after ../shared/tools/gpu-bundle benchmarks/ForwardAD.GpuBenchmarks).
return ForwardAD.GpuBenchmarks.GpuCompare.Run();
