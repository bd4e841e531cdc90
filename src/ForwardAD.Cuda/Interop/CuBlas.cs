using System.Runtime.InteropServices;

namespace ForwardAD.Cuda.Interop;

/// <summary>The cuBLAS v2 entry points the backend uses (cublas_v2.h). cuBLAS is column-major; see <see cref="CudaBackend.Gemm"/>.</summary>
internal static unsafe partial class CuBlas
{
    public const int StatusSuccess = 0;
    public const int OperationNone = 0, OperationTranspose = 1;
    public const int DefaultMath = 0, Tf32TensorOpMath = 3;
    public const int DataTypeFloat32 = 0;
    public const int Compute32F = 68, Compute32FFastTf32 = 77;
    public const int GemmDefault = -1;

    [LibraryImport(NativeLibraries.CuBlas, EntryPoint = "cublasCreate_v2")] public static partial int cublasCreate(out IntPtr handle);
    [LibraryImport(NativeLibraries.CuBlas, EntryPoint = "cublasDestroy_v2")] public static partial int cublasDestroy(IntPtr handle);
    [LibraryImport(NativeLibraries.CuBlas, EntryPoint = "cublasSetStream_v2")] public static partial int cublasSetStream(IntPtr handle, IntPtr stream);
    [LibraryImport(NativeLibraries.CuBlas)] public static partial int cublasSetMathMode(IntPtr handle, int mode);
    [LibraryImport(NativeLibraries.CuBlas, EntryPoint = "cublasSgemm_v2")]
    public static partial int cublasSgemm(IntPtr handle, int transA, int transB, int m, int n, int k, float* alpha,
        ulong a, int lda, ulong b, int ldb, float* beta, ulong c, int ldc);
    [LibraryImport(NativeLibraries.CuBlas)]
    public static partial int cublasSgemmStridedBatched(IntPtr handle, int transA, int transB, int m, int n, int k, float* alpha,
        ulong a, int lda, long strideA, ulong b, int ldb, long strideB, float* beta, ulong c, int ldc, long strideC, int batchCount);
    [LibraryImport(NativeLibraries.CuBlas)]
    public static partial int cublasGemmEx(IntPtr handle, int transA, int transB, int m, int n, int k, float* alpha,
        ulong a, int aType, int lda, ulong b, int bType, int ldb, float* beta, ulong c, int cType, int ldc, int computeType, int algorithm);
    [LibraryImport(NativeLibraries.CuBlas)] public static partial byte* cublasGetStatusString(int status);

    public static void Check(int status, string function)
    {
        if (status == StatusSuccess) return;
        var message = cublasGetStatusString(status);
        throw new CudaException(function, status, message == null ? "unknown cuBLAS status" : Marshal.PtrToStringUTF8((IntPtr)message) ?? "");
    }
}
