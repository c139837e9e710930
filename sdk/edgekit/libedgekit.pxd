# Cython declarations of the libedgekit C API (sdk/runtime/include/edgekit/*.h), for cimport.
from libc.stdint cimport uint64_t

cdef extern from "edgekit/edgekit.h" nogil:
    ctypedef enum ek_status_t:
        EK_OK
    const char *ek_status_name(ek_status_t status)
    const char *ek_status_str(ek_status_t status)
    const char *ek_last_error()
    const char *ek_version()

    int EK_MAX_DEVICES
    ctypedef struct ek_dev_t:
        uint64_t id
    ctypedef enum ek_coherence_t:
        EK_COHERENCE_DEFAULT
        EK_COHERENCE_COHERENT
        EK_COHERENCE_STRICT
    ctypedef enum ek_backing_t:
        EK_BACKING_DEFAULT
        EK_BACKING_MEMFD
        EK_BACKING_DMABUF
        EK_BACKING_ANONYMOUS
    ctypedef struct ek_dev_config_t:
        size_t heap_size
        ek_coherence_t coherence
        ek_backing_t backing
    ek_status_t ek_dev_count(int *count)
    ek_status_t ek_dev_request(ek_dev_t *handle, int id)
    ek_status_t ek_dev_request_ex(ek_dev_t *handle, int id, const ek_dev_config_t *config)
    ek_status_t ek_dev_free(ek_dev_t handle)
    ek_status_t ek_dev_sync(ek_dev_t handle)
    ek_status_t ek_dev_id(ek_dev_t handle, int *id)
    ctypedef struct ek_heap_stats_t:
        size_t total
        size_t used
        size_t peak
        size_t free
        size_t largest_free
        size_t allocations
        size_t alignment
        ek_coherence_t coherence
        ek_backing_t backing
    ek_status_t ek_dev_heap_stats(ek_dev_t handle, ek_heap_stats_t *stats)
    ctypedef enum ek_coh_kind_t:
        EK_COH_UNFLUSHED_READ
    ctypedef struct ek_coh_violation_t:
        ek_coh_kind_t kind
        uint64_t mem
        size_t offset
        size_t size
        char what[160]
    ek_status_t ek_dev_coherence_report(ek_dev_t handle, ek_coh_violation_t *out, size_t capacity,
                                        size_t *count)
    ek_status_t ek_dev_coherence_clear(ek_dev_t handle)
    const char *ek_coh_kind_name(ek_coh_kind_t kind)

    # remote devices (edgekit/remote.h)
    int EK_REMOTE_PROTOCOL
    int EK_REMOTE_DEFAULT_PORT
    ctypedef struct ek_remote_options_t:
        int connect_timeout_ms
        int reply_timeout_ms
        void (*progress)(void *user_data, const char *what, uint64_t done, uint64_t total) noexcept with gil
        void *progress_user_data
        ek_dev_config_t device_config
        const char *key_file
    ek_status_t ek_remote_make_key(const char *path)
    ek_status_t ek_dev_connect(ek_dev_t *handle, const char *url, int id, const ek_remote_options_t *options)
    ek_status_t ek_dev_connect_fd(ek_dev_t *handle, int fd, const char *label, int id,
                                  const ek_remote_options_t *options)
    ctypedef struct ek_remote_info_t:
        bint remote
        int protocol
        char url[128]
        char runtime_version[32]
        char arch[32]
        int model_format_major
        int model_format_minor
        int devices
        char kernels[32]
        int threads
    ek_status_t ek_dev_remote_info(ek_dev_t handle, ek_remote_info_t *info)

    ctypedef struct ek_mem_t:
        uint64_t id
    ek_status_t ek_malloc_device(ek_dev_t dev, ek_mem_t *mem, size_t size)
    ek_status_t ek_free_device(ek_dev_t dev, ek_mem_t mem)
    ek_status_t ek_mem_size(ek_mem_t mem, size_t *size)
    ek_status_t ek_memcpy_s2d(ek_dev_t dev, ek_mem_t dst, const void *src)
    ek_status_t ek_memcpy_s2d_partial(ek_dev_t dev, ek_mem_t dst, const void *src, size_t size)
    ek_status_t ek_memcpy_s2d_partial_offset(ek_dev_t dev, ek_mem_t dst, const void *src, size_t size,
                                             size_t offset)
    ek_status_t ek_memcpy_d2s(ek_dev_t dev, void *dst, ek_mem_t src)
    ek_status_t ek_memcpy_d2s_partial(ek_dev_t dev, void *dst, ek_mem_t src, size_t size)
    ek_status_t ek_memcpy_d2s_partial_offset(ek_dev_t dev, void *dst, ek_mem_t src, size_t size,
                                             size_t offset)
    ek_status_t ek_memcpy_d2d(ek_dev_t dev, ek_mem_t dst, size_t dst_offset, ek_mem_t src,
                              size_t src_offset, size_t size)
    ek_status_t ek_mem_mmap(ek_dev_t dev, ek_mem_t mem, void **addr)
    ek_status_t ek_mem_unmap(ek_dev_t dev, ek_mem_t mem)
    ek_status_t ek_mem_flush(ek_dev_t dev, ek_mem_t mem)
    ek_status_t ek_mem_flush_partial(ek_dev_t dev, ek_mem_t mem, size_t offset, size_t size)
    ek_status_t ek_mem_invalidate(ek_dev_t dev, ek_mem_t mem)
    ek_status_t ek_mem_invalidate_partial(ek_dev_t dev, ek_mem_t mem, size_t offset, size_t size)


# ---- models and inference (edgekit/runtime.h) ----------------------------------------------------------
from libc.stdint cimport int32_t, int64_t

cdef extern from "edgekit/edgekit.h" nogil:
    ctypedef enum ek_dtype_t:
        EK_DTYPE_FLOAT32
        EK_DTYPE_FLOAT16
        EK_DTYPE_INT8
        EK_DTYPE_UINT8
        EK_DTYPE_INT32
        EK_DTYPE_INT64
    size_t ek_dtype_size(ek_dtype_t dtype)
    const char *ek_dtype_name(ek_dtype_t dtype)

    int EK_MAX_DIMS
    ctypedef struct ek_shape_t:
        int num_dims
        int64_t dims[8]
    ctypedef struct ek_tensor_t:
        ek_mem_t mem
        size_t offset
        ek_dtype_t dtype
        ek_shape_t shape

    ctypedef struct ek_rt_t:
        uint64_t id
    ctypedef enum ek_kernels_t:
        EK_KERNELS_DEFAULT
        EK_KERNELS_AUTO
        EK_KERNELS_PORTABLE
        EK_KERNELS_XNNPACK
    ctypedef struct ek_allocator_t:
        uint64_t id
    ctypedef struct ek_allocator_ops_t:
        ek_status_t (*alloc)(void *user_data, ek_dev_t dev, size_t size, size_t alignment, ek_mem_t *mem,
                             size_t *offset) noexcept nogil
        void (*free)(void *user_data, ek_dev_t dev, ek_mem_t mem, size_t offset, size_t size) noexcept nogil
    ctypedef struct ek_allocator_stats_t:
        uint64_t allocations
        uint64_t frees
        uint64_t failures
        size_t live_blocks
        size_t bytes_in_use
        size_t peak_bytes
        size_t capacity
        int runtimes
    ek_status_t ek_allocator_create(ek_allocator_t *allocator, const ek_allocator_ops_t *ops, void *user_data)
    ek_status_t ek_allocator_create_pool(ek_allocator_t *allocator, ek_dev_t dev, size_t capacity)
    ek_status_t ek_allocator_destroy(ek_allocator_t allocator)
    ek_status_t ek_allocator_stats(ek_allocator_t allocator, ek_allocator_stats_t *stats)
    ek_status_t ek_allocator_free(ek_allocator_t allocator, ek_mem_t mem, size_t offset)

    ctypedef struct ek_rt_config_t:
        ek_kernels_t kernels
        int threads
        ek_allocator_t allocator
    ek_status_t ek_rt_create(ek_rt_t *rt, ek_dev_t dev)
    ek_status_t ek_rt_create_ex(ek_rt_t *rt, ek_dev_t dev, const ek_rt_config_t *config)
    ek_status_t ek_rt_destroy(ek_rt_t rt)
    ek_status_t ek_rt_kernels(ek_rt_t rt, const char **name)
    ek_status_t ek_rt_kernels_reason(ek_rt_t rt, const char **reason)
    ek_status_t ek_rt_threads(ek_rt_t rt, int *threads)
    ek_status_t ek_rt_load_model(ek_rt_t rt, const char *path)
    ek_status_t ek_rt_load_plugin(ek_rt_t rt, const char *path)
    ek_status_t ek_rt_load_model_data(ek_rt_t rt, const void *data, size_t size)
    ek_status_t ek_rt_network_count(ek_rt_t rt, int *count)
    ek_status_t ek_rt_network_name(ek_rt_t rt, int index, const char **name)

    ctypedef struct ek_io_info_t:
        const char *name
        ek_dtype_t dtype
        float scale
        int32_t zero_point
        size_t max_bytes
        bint dynamic
    ctypedef struct ek_stage_info_t:
        const ek_shape_t *input_shapes
        const ek_shape_t *output_shapes
    ctypedef struct ek_net_info_t:
        const char *name
        int input_count
        const ek_io_info_t *inputs
        int output_count
        const ek_io_info_t *outputs
        int stage_count
        const ek_stage_info_t *stages
    ek_status_t ek_rt_network_info(ek_rt_t rt, const char *name, const ek_net_info_t **info)

    ctypedef struct ek_launch_t:
        uint64_t id
    ctypedef struct ek_profile_t:
        uint64_t id
    ctypedef enum ek_profile_kind_t:
        EK_PROFILE_MODEL_INIT
        EK_PROFILE_REQUEST_INIT
        EK_PROFILE_TRANSFER_FROM_INPUT
        EK_PROFILE_WAIT
        EK_PROFILE_LAYER_EXECUTE
        EK_PROFILE_TRANSFER_TO_OUTPUT
        EK_PROFILE_MODEL_EXECUTE
    ctypedef struct ek_profile_record_t:
        ek_profile_kind_t kind
        const char *name
        const char *network
        const char *op_type
        const char *provider
        const char *nodes
        const char *tensor
        const char *shapes
        int op_index
        int stage
        int threads
        uint64_t launch
        uint64_t flops
        uint64_t bytes
        uint64_t start_ns
        uint64_t duration_ns
        uint64_t thread
        const char *algorithm
    ek_status_t ek_profile_create(ek_profile_t *profile)
    ek_status_t ek_profile_destroy(ek_profile_t profile)
    ek_status_t ek_profile_clear(ek_profile_t profile)
    ek_status_t ek_profile_count(ek_profile_t profile, size_t *count)
    ek_status_t ek_profile_get(ek_profile_t profile, size_t index, ek_profile_record_t *record)
    ek_status_t ek_profile_add(ek_profile_t profile, ek_profile_kind_t kind, const char *name, uint64_t start_ns,
                               uint64_t duration_ns)
    uint64_t ek_profile_clock_ns()
    const char *ek_profile_kind_name(ek_profile_kind_t kind)
    ek_status_t ek_profile_write(ek_profile_t profile, const char *dir) nogil
    ctypedef struct ek_stage_memory_t:
        size_t constant_bytes
        size_t workspace_bytes
        size_t alignment
    ek_status_t ek_rt_stage_memory(ek_rt_t rt, const char *net_name, int stage, ek_stage_memory_t *memory)
    ctypedef struct ek_workspace_t:
        uint64_t id
    ek_status_t ek_rt_workspace_create(ek_rt_t rt, const char *net_name, int stage, ek_mem_t mem, size_t offset,
                                       size_t size, ek_workspace_t *workspace)
    ek_status_t ek_workspace_destroy(ek_workspace_t workspace)

    ctypedef struct ek_launch_options_t:
        int threads
        uint64_t cpu_mask
        void (*on_done)(void *user_data, ek_status_t status) noexcept nogil
        void *user_data
        ek_profile_t profile
        const char *dump_dir
        ek_workspace_t workspace
    ek_status_t ek_rt_launch_tensor(ek_rt_t rt, const char *net_name, const ek_tensor_t *inputs,
                                    int input_count, ek_tensor_t *outputs, int output_count, bint user_mem,
                                    const ek_launch_options_t *options, ek_launch_t *launch)
    ek_status_t ek_launch_wait(ek_launch_t launch, int timeout_ms)
    ek_status_t ek_rt_run(ek_rt_t rt, const char *net_name, const ek_tensor_t *inputs, int input_count,
                          ek_tensor_t *outputs, int output_count, const ek_launch_options_t *options)
    ek_status_t ek_rt_launch_data(ek_rt_t rt, const char *net_name, const void *const *inputs,
                                  const ek_shape_t *input_shapes, int input_count, void *const *outputs,
                                  const size_t *output_capacity, ek_shape_t *output_shapes, int output_count,
                                  const ek_launch_options_t *options)

    # The status codes the inference layer tests for by name.
    enum:
        EK_ERR_BUSY
        EK_ERR_OUT_OF_MEMORY
        EK_ERR_TIMEOUT
