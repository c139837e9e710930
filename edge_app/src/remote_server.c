/* remote_server: serves the board's devices to EdgeKit clients on the host (docs/remote-protocol.md).
 * A thin program around ek_server_*: flags, signals, log lines. C11, libc + pthread + libedgekit. */
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <edgekit/edgekit.h>

static const char help_text[] =
    "usage: remote_server [--host ADDRESS] [--port PORT] [flags]\n"
    "\n"
    "Serves this board's EdgeKit devices to hosts: ek.Device(\"tcp://HOST:PORT\") or\n"
    "ek.Device(\"ssh://user@board\") in Python, ek_dev_connect() in C, edgekit-app --rpc_server.\n"
    "Each connection is one session; everything a session allocated, loaded or launched is freed\n"
    "when its client disconnects or stays silent for --idle-timeout.\n"
    "\n"
    "By default it listens on loopback only, and hosts reach it through SSH (the Python API opens the\n"
    "SSH channel itself; from C, ssh -tt -L PORT:127.0.0.1:PORT board sleep infinity).\n"
    "To listen on a network address, pair it: every session must then prove it holds the key, and\n"
    "is encrypted (libsodium: apt install libsodium23):\n"
    "  remote_server --make-key /etc/edgekit/board.key        (once; copy the file to each host)\n"
    "  remote_server --host 0.0.0.0 --key /etc/edgekit/board.key\n"
    "  host: ek.Device(\"tcp://board:9090\", key_file=\"board.key\") / edgekit-app --rpc_key board.key\n"
    "\n"
    "flags:\n"
    "  --host ADDRESS         address to listen on (default 127.0.0.1; others need --key)\n"
    "  --key FILE             the pairing key: sessions must hold it and are encrypted\n"
    "  --make-key FILE        write a new pairing key to FILE (mode 0600; never over a file) and exit\n"
    "  --port PORT            TCP port (default 9090; 0 picks a free one, printed on start)\n"
    "  --max-sessions N       sessions at once; more are told the server is full (default 64)\n"
    "  --idle-timeout SEC     drop a client silent this long (default 60; clients ping meanwhile)\n"
    "  --launch-timeout SEC   report a launch running this long as a timeout (default 600)\n"
    "  --max-model-mb MB      the largest model a client may upload (default 1024)\n"
    "  --quiet                no log lines (errors still go to stderr)\n"
    "  --version              print the EdgeKit and protocol versions\n"
    "  --help                 this text\n"
    "\n"
    "SIGUSR1 logs a status line: sessions open and started, the heap in use (malloc), open files.\n"
    "exit status: 0 after SIGINT/SIGTERM, 2 for bad flags, 1 when it cannot listen.\n";

static ek_server_t *server;
static _Atomic bool status_stopping; /* main is about to free the server: the status thread returns */

static void on_signal(int sig) {
    (void)sig;
    ek_server_stop(server);
}

static void log_line(void *user, const char *line) {
    (void)user;
    char stamp[32];
    time_t now = time(NULL);
    struct tm tm;
    strftime(stamp, sizeof stamp, "%Y-%m-%d %H:%M:%S", localtime_r(&now, &tm));
    fprintf(stderr, "%s remote_server: %s\n", stamp, line);
}

/* glibc's struct mallinfo2 (2.33 and later), looked up at run time: the program also runs on older
 * glibc, where the status line goes without the heap. */
struct heap_info {
    size_t arena, ordblks, smblks, hblks, hblkhd, usmblks, fsmblks, uordblks, fordblks, keepcost;
};

static long open_files(void) {
    DIR *dir = opendir("/proc/self/fd");
    long n = -1; /* not the directory's own */
    struct dirent *e;
    while (dir && (e = readdir(dir)) != NULL)
        n += e->d_name[0] != '.';
    if (dir)
        closedir(dir);
    return dir ? n : -1;
}

/* SIGUSR1, taken by this thread alone (sigwait): one status line, whether or not --quiet. What the
 * soak (tests/soak.py) reads to see that sessions end and nothing stays behind. */
static void *status_main(void *arg) {
    (void)arg;
    struct heap_info (*heap)(void) = (struct heap_info(*)(void))dlsym(RTLD_DEFAULT, "mallinfo2");
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    for (;;) {
        int sig;
        if (sigwait(&set, &sig) != 0)
            continue;
        if (status_stopping)
            return NULL;
        ek_server_stats_t stats;
        if (ek_server_stats(server, &stats) != EK_OK)
            continue;
        char line[256], heap_text[64] = "heap in use unknown (glibc < 2.33)";
        if (heap) {
            struct heap_info info = heap();
            snprintf(heap_text, sizeof heap_text, "heap in use %zu bytes", info.uordblks + info.hblkhd);
        }
        snprintf(line, sizeof line, "status: %d session%s open, %llu started; %s; %ld open files", stats.sessions_open,
                 stats.sessions_open == 1 ? "" : "s", (unsigned long long)stats.sessions_started, heap_text,
                 open_files());
        log_line(NULL, line);
    }
    return NULL;
}

/* A whole number in [min, max]; -1 with a message on stderr otherwise. */
static int parse_int(const char *flag, const char *text, long min, long max, long *out) {
    char *end;
    errno = 0;
    long v = text ? strtol(text, &end, 10) : 0;
    if (!text || errno || end == text || *end || v < min || v > max) {
        fprintf(stderr, "remote_server: %s needs a whole number from %ld to %ld, not '%s' (see --help)\n", flag, min,
                max, text ? text : "");
        return -1;
    }
    *out = v;
    return 0;
}

int main(int argc, char **argv) {
    ek_server_config_t config = {0};
    config.port = EK_REMOTE_DEFAULT_PORT;
    bool quiet = false;
    for (int i = 1; i < argc; i++) {
        const char *flag = argv[i], *value = i + 1 < argc ? argv[i + 1] : NULL;
        long v;
        if (strcmp(flag, "--help") == 0 || strcmp(flag, "-h") == 0) {
            fputs(help_text, stdout);
            return 0;
        } else if (strcmp(flag, "--version") == 0) {
            printf("remote_server (EdgeKit %s, remote protocol %d)\n", ek_version(), EK_REMOTE_PROTOCOL);
            return 0;
        } else if (strcmp(flag, "--make-key") == 0) {
            if (!value) {
                fprintf(stderr, "remote_server: --make-key needs a file name (see --help)\n");
                return 2;
            }
            if (ek_remote_make_key(value) != EK_OK) {
                fprintf(stderr, "remote_server: %s\n", ek_last_error());
                return 1;
            }
            printf("wrote a new pairing key to %s: start remote_server with --key %s, and give each host a copy "
                   "(key_file= in Python, edgekit-app --rpc_key)\n", value, value);
            return 0;
        } else if (strcmp(flag, "--key") == 0) {
            if (!value) {
                fprintf(stderr, "remote_server: --key needs a key file (see --help)\n");
                return 2;
            }
            config.key_file = value;
            i++;
        } else if (strcmp(flag, "--quiet") == 0) {
            quiet = true;
        } else if (strcmp(flag, "--host") == 0) {
            if (!value) {
                fprintf(stderr, "remote_server: --host needs an address (see --help)\n");
                return 2;
            }
            config.host = value;
            i++;
        } else if (strcmp(flag, "--port") == 0) {
            if (parse_int(flag, value, 0, 65535, &v) != 0)
                return 2;
            config.port = (int)v;
            i++;
        } else if (strcmp(flag, "--max-sessions") == 0) {
            if (parse_int(flag, value, 1, 4096, &v) != 0)
                return 2;
            config.max_sessions = (int)v;
            i++;
        } else if (strcmp(flag, "--idle-timeout") == 0) {
            if (parse_int(flag, value, 1, INT_MAX / 1000, &v) != 0)
                return 2;
            config.idle_timeout_ms = (int)v * 1000;
            i++;
        } else if (strcmp(flag, "--launch-timeout") == 0) {
            if (parse_int(flag, value, 1, INT_MAX / 1000, &v) != 0)
                return 2;
            config.launch_timeout_ms = (int)v * 1000;
            i++;
        } else if (strcmp(flag, "--max-model-mb") == 0) {
            if (parse_int(flag, value, 1, 1 << 20, &v) != 0)
                return 2;
            config.max_model_bytes = (uint64_t)v << 20;
            i++;
        } else {
            fprintf(stderr, "remote_server: unknown argument '%s' (see remote_server --help)\n", flag);
            return 2;
        }
    }
    if (!quiet)
        config.log = log_line;
    if (ek_server_create(&server, &config) != EK_OK) {
        fprintf(stderr, "remote_server: %s\n", ek_last_error());
        return 1;
    }
    /* SIGUSR1 is blocked in every thread (the session threads inherit this mask) but the status one. */
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &usr1, NULL);
    pthread_t status_thread;
    bool status_started = pthread_create(&status_thread, NULL, status_main, NULL) == 0;
    /* Before the line below: a script that reads it may stop the server at once, and must see a clean
     * stop (exit 0), not a death by SIGINT. ek_server_stop before ek_server_run is honoured. */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    /* The chosen port on stdout, one line, for scripts that started it with --port 0. */
    printf("remote_server listening on %s:%d\n", config.host ? config.host : "127.0.0.1", ek_server_port(server));
    fflush(stdout);
    ek_status_t status = ek_server_run(server);
    if (status_started) { /* before the server it reads goes */
        status_stopping = true;
        pthread_kill(status_thread, SIGUSR1);
        pthread_join(status_thread, NULL);
    }
    ek_server_destroy(server);
    if (status != EK_OK) {
        fprintf(stderr, "remote_server: %s\n", ek_last_error());
        return 1;
    }
    return 0;
}
