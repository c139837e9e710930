/* Kernel providers: which kernels a runtime uses (ek_rt_config_t.kernels or EDGEKIT_KERNELS), and the
 * optional XNNPACK provider, a shared library dlopen'ed once per process from the folder libedgekit
 * itself was loaded from (so a bundle or wheel finds its own copy), else by its plain name. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"

#define PROVIDER_LIBRARY "libedgekit_xnnpack.so"

static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static const struct ek_provider *loaded;
static char load_error[600]; /* why it is not used */

/* Any object of libedgekit: dladdr on it names the library file. */
static const int anchor = 1;

static void *open_next_to_library(char *why, size_t why_size) {
    Dl_info info;
    why[0] = '\0';
    if (dladdr(&anchor, &info) && info.dli_fname) {
        const char *slash = strrchr(info.dli_fname, '/');
        if (slash) {
            char path[4096];
            int n = snprintf(path, sizeof path, "%.*s/%s", (int)(slash - info.dli_fname), info.dli_fname,
                             PROVIDER_LIBRARY);
            if (n > 0 && (size_t)n < sizeof path) {
                void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
                if (lib)
                    return lib;
                /* Copied by hand: snprintf into the smaller buffer trips -Wformat-truncation at -O3. */
                const char *e = dlerror();
                const char *text = e ? e : path;
                size_t len = strlen(text) < why_size ? strlen(text) : why_size - 1;
                memcpy(why, text, len);
                why[len] = '\0';
            }
        }
    }
    return NULL;
}

static void load_provider(void) {
    char first[200];
    void *lib = open_next_to_library(first, sizeof first);
    if (!lib) {
        lib = dlopen(PROVIDER_LIBRARY, RTLD_NOW | RTLD_LOCAL);
        if (!lib) {
            const char *e = dlerror();
            snprintf(load_error, sizeof load_error, "%s%s%s", first, first[0] ? "; " : "",
                     e ? e : "dlopen failed");
            return;
        }
    }
    /* dlsym returns an object pointer; copy it into the function pointer (ISO C has no cast). */
    void *sym = dlsym(lib, EK_PROVIDER_ENTRY);
    if (!sym) {
        const char *e = dlerror();
        snprintf(load_error, sizeof load_error, "%s has no %s: %s", PROVIDER_LIBRARY, EK_PROVIDER_ENTRY,
                 e ? e : "symbol not found");
        dlclose(lib);
        return;
    }
    ek_provider_entry_fn entry;
    memcpy(&entry, &sym, sizeof entry);
    const struct ek_provider *p = entry();
    if (!p || p->abi != EK_PROVIDER_ABI || !p->create || !p->run || !p->destroy || !p->init) {
        snprintf(load_error, sizeof load_error, "%s provides ABI %d, this runtime needs ABI %d",
                 PROVIDER_LIBRARY, p ? p->abi : -1, EK_PROVIDER_ABI);
        dlclose(lib);
        return;
    }
    /* The library may load on a machine where its kernels cannot run (XNNPACK's own initialisation
     * fails): then it is not used, and this says why. It stays loaded (its state may point into it). */
    char why[300] = "";
    ek_status_t status = p->init(why, sizeof why);
    if (status != EK_OK) {
        snprintf(load_error, sizeof load_error, "%s loaded, but its kernels cannot run here: %s", PROVIDER_LIBRARY,
                 why[0] ? why : ek_status_str(status));
        return;
    }
    loaded = p; /* the library stays loaded for the process */
}

ek_status_t ek_provider_select(ek_kernels_t requested, ek_kernels_t *resolved, const struct ek_provider **provider,
                               const char **why) {
    ek_kernels_t kernels = requested;
    if (kernels == EK_KERNELS_DEFAULT) {
        const char *env = getenv("EDGEKIT_KERNELS");
        if (!env || !*env || strcmp(env, "auto") == 0)
            kernels = EK_KERNELS_AUTO;
        else if (strcmp(env, "portable") == 0)
            kernels = EK_KERNELS_PORTABLE;
        else if (strcmp(env, "xnnpack") == 0)
            kernels = EK_KERNELS_XNNPACK;
        else
            return ek_fail(EK_ERR_INVALID_ARG, "EDGEKIT_KERNELS='%.40s': expected 'portable', 'xnnpack' or 'auto'",
                           env);
    } else if (kernels != EK_KERNELS_AUTO && kernels != EK_KERNELS_PORTABLE && kernels != EK_KERNELS_XNNPACK) {
        return ek_fail(EK_ERR_INVALID_ARG, "unknown kernels choice %d: expected EK_KERNELS_DEFAULT, _AUTO, "
                       "_PORTABLE or _XNNPACK", (int)requested);
    }
    *provider = NULL;
    if (why)
        *why = "";
    if (kernels != EK_KERNELS_PORTABLE) {
        pthread_once(&load_once, load_provider);
        if (loaded) {
            *provider = loaded;
        } else if (kernels == EK_KERNELS_XNNPACK) {
            return ek_fail(EK_ERR_UNSUPPORTED, "XNNPACK kernels were asked for, but the provider cannot be used: %s",
                           load_error);
        } else {
            kernels = EK_KERNELS_PORTABLE; /* AUTO without the provider */
            if (why)
                *why = load_error; /* written once, under load_once, before this read */
        }
    }
    *resolved = kernels;
    return EK_OK;
}
