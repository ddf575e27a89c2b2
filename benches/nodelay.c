/* LD_PRELOAD shim for scripts/bench.sh: sets TCP_NODELAY on every TCP socket the process
 * connects, before the connect. OpenSSH sets TCP_NODELAY only for interactive sessions (with a
 * tty), so `ssh host true` runs with Nagle's algorithm on; the "direct NODELAY" path runs ssh
 * with this shim, as the latency baseline idmux's paths are compared with.
 *
 *   cc -shared -fPIC -O2 -o nodelay.so benches/nodelay.c -ldl
 *   LD_PRELOAD=$PWD/nodelay.so ssh ...
 *
 * IDMUX_NODELAY_LOG=FILE appends one line per socket set, so the harness can check it worked. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

typedef int (*connect_fn)(int, const struct sockaddr *, socklen_t);

int connect(int fd, const struct sockaddr *addr, socklen_t len) {
    static connect_fn real;
    if (!real)
        real = (connect_fn)dlsym(RTLD_NEXT, "connect");
    int type = 0;
    socklen_t tl = sizeof type;
    if (addr && (addr->sa_family == AF_INET || addr->sa_family == AF_INET6) &&
        getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) == 0 && type == SOCK_STREAM) {
        int one = 1;
        int rc = setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        const char *log = getenv("IDMUX_NODELAY_LOG");
        if (log && *log) {
            int lf = open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
            if (lf >= 0) {
                char line[64];
                int n = snprintf(line, sizeof line, "%d nodelay fd %d rc %d\n", (int)getpid(), fd, rc);
                if (n > 0)
                    (void)!write(lf, line, (size_t)n);
                close(lf);
            }
        }
    }
    return real(fd, addr, len);
}
