/* plugin.c's interface to the loader (model.c), the runtime (runtime.c) and the engine (engine.c).
 * Not installed; the plugin ABI itself is include/edgekit/plugin.h. */
#ifndef EDGEKIT_PLUGIN_INTERNAL_H
#define EDGEKIT_PLUGIN_INTERNAL_H

#include "edgekit/runtime.h"
#include "../kernels/kernel.h"

struct ek_runtime;
/* One loaded library and its registrations; a runtime's are a list (ek_runtime.plugins). */
struct ek_plugin_lib;

/* Load a library into a runtime: ELF check, dlopen, ABI version, registration, no op registered twice. */
ek_status_t ek_plugin_load(struct ek_runtime *rt, const char *path);
/* The check of a plugin file before dlopen, on its first `size` bytes of `file_size` (`path` names it in
 * messages): an ELF shared library of this machine, class and byte order whose program headers (within
 * the bytes given) and loadable and dynamic segments (within the file) are all there
 * (EK_ERR_UNSUPPORTED saying what is wrong). */
ek_status_t ek_plugin_check_elf(const unsigned char *data, size_t size, uint64_t file_size, const char *path);
/* Close a destroyed runtime's libraries (its models are freed already). */
void ek_plugin_unload_all(struct ek_runtime *rt);
/* Prepare a PLUGIN op of a model being loaded against `plugins` (NULL: none loaded): the registration
 * of its (domain, op type), its operand counts, and infer() agreeing with the recorded outputs. */
ek_status_t ek_plugin_prepare(struct ek_op *op, const struct ek_plugin_lib *plugins);
/* A prepared PLUGIN op's "domain::op_type" and provider "plugin:<library file name>". */
const char *ek_plugin_op_label(const struct ek_op *op);
const char *ek_plugin_provider(const struct ek_op *op);
/* What profiles, dumps and messages call an op's type: "CONV", ..., or a plugin op's "domain::op_type". */
const char *ek_op_display_type(const struct ek_op *op);

#endif /* EDGEKIT_PLUGIN_INTERNAL_H */
