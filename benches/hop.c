/* CPU cost of one socket hop, for scripts/bench.sh's relay-cost table: a writer process sends
 * N bytes through a unix stream socketpair or a TCP loopback connection to a reader process in
 * BUF-sized writes and reads, nothing else. Each side reports its own user+system CPU time
 * (getrusage RUSAGE_SELF) and the wall time, as one JSON line:
 *
 *   hop unix|tcp BYTES [BUF [WRITER_CPU READER_CPU]]
 *   {"kind":"tcp","bytes":...,"buf":65536,"cpus":[0,1],"wall_s":...,"writer_cpu_s":...,"reader_cpu_s":...}
 *
 * With the CPUs given, the writer and the reader are pinned to them (the same one for both
 * ends on one core); without, they run where the scheduler puts them ("cpus":[-1,-1]).
 *
 * On loopback TCP the sender's context also runs the receive path (softirq), so the writer's
 * CPU holds most of the hop's cost; that is what a relay writing to TCP pays. Where the two
 * processes run is the caller's choice (measure.py pins both to one core for the limit, and
 * to two for the comparison).
 *
 *   hop wake ROUND_TRIPS
 *   {"kind":"wake","round_trips":...,"cpus":[0,1],"wall_s":...,"writer_cpu_s":...,"reader_cpu_s":...}
 *
 * A byte's round trip across cores: two processes pinned to different cores pass one byte
 * back and forth over a unix socketpair, so each side wakes the other, sleeps and is woken
 * once per round trip. (What a relay pays per wait is less: the waker's share is charged to
 * its peer, and a busy core wakes more cheaply than an idle one.) */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double cpu_self(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void pin(int cpu) {
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    if (sched_setaffinity(0, sizeof s, &s)) die("sched_setaffinity");
}

/* The ping-pong of `hop wake`: the parent on the first CPU it may use, the child on the second. */
static int wake(long long n) {
    cpu_set_t s;
    if (sched_getaffinity(0, sizeof s, &s)) die("sched_getaffinity");
    int cpus[2], k = 0;
    for (int c = 0; c < CPU_SETSIZE && k < 2; c++)
        if (CPU_ISSET(c, &s)) cpus[k++] = c;
    if (k < 2) {
        fprintf(stderr, "hop wake: needs two CPUs, has %d\n", k);
        return 1;
    }
    int sv[2], res[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) die("socketpair");
    if (pipe(res)) die("pipe");
    char b = 0;
    double t0 = now();
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) { /* the echo side */
        close(sv[0]);
        pin(cpus[1]);
        double c0 = cpu_self();
        for (long long i = 0; i < n; i++)
            if (read(sv[1], &b, 1) != 1 || write(sv[1], &b, 1) != 1) die("echo");
        double c = cpu_self() - c0;
        if (write(res[1], &c, sizeof c) != sizeof c) die("result");
        _exit(0);
    }
    close(sv[1]);
    pin(cpus[0]);
    double c0 = cpu_self();
    for (long long i = 0; i < n; i++)
        if (write(sv[0], &b, 1) != 1 || read(sv[0], &b, 1) != 1) die("ping");
    double pc = cpu_self() - c0;
    double wall = now() - t0;
    double ec = 0;
    if (read(res[0], &ec, sizeof ec) != sizeof ec) die("result");
    waitpid(pid, NULL, 0);
    printf("{\"kind\":\"wake\",\"round_trips\":%lld,\"cpus\":[%d,%d],\"wall_s\":%.6f,"
           "\"writer_cpu_s\":%.6f,\"reader_cpu_s\":%.6f}\n", n, cpus[0], cpus[1], wall, pc, ec);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: hop unix|tcp BYTES [BUF [WRITER_CPU READER_CPU]] | hop wake ROUND_TRIPS\n");
        return 2;
    }
    if (strcmp(argv[1], "wake") == 0) return wake(atoll(argv[2]));
    int tcp = strcmp(argv[1], "tcp") == 0;
    long long total = atoll(argv[2]);
    size_t buf = argc > 3 ? (size_t)atol(argv[3]) : 65536;
    int wcpu = argc > 5 ? atoi(argv[4]) : -1, rcpu = argc > 5 ? atoi(argv[5]) : -1;
    int wfd, rfd;
    if (tcp) {
        int l = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t al = sizeof a;
        if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 1) ||
            getsockname(l, (struct sockaddr *)&a, &al))
            die("listen");
        wfd = socket(AF_INET, SOCK_STREAM, 0);
        if (wfd < 0 || connect(wfd, (struct sockaddr *)&a, sizeof a)) die("connect");
        rfd = accept(l, NULL, NULL);
        if (rfd < 0) die("accept");
        close(l);
    } else {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) die("socketpair");
        wfd = sv[0];
        rfd = sv[1];
    }
    int res[2];
    if (pipe(res)) die("pipe");
    char *b = malloc(buf);
    memset(b, 0, buf);
    double t0 = now();
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) { /* writer */
        close(rfd);
        if (wcpu >= 0) pin(wcpu);
        double c0 = cpu_self();
        long long left = total;
        while (left > 0) {
            ssize_t n = write(wfd, b, left < (long long)buf ? (size_t)left : buf);
            if (n <= 0) die("write");
            left -= n;
        }
        close(wfd);
        double c = cpu_self() - c0;
        if (write(res[1], &c, sizeof c) != sizeof c) die("result");
        _exit(0);
    }
    close(wfd);
    if (rcpu >= 0) pin(rcpu);
    double c0 = cpu_self();
    long long got = 0;
    for (;;) {
        ssize_t n = read(rfd, b, buf);
        if (n < 0) die("read");
        if (n == 0) break;
        got += n;
    }
    double rc = cpu_self() - c0;
    double wall = now() - t0;
    double wc = 0;
    if (read(res[0], &wc, sizeof wc) != sizeof wc) die("result");
    waitpid(pid, NULL, 0);
    if (got != total) {
        fprintf(stderr, "hop: got %lld of %lld bytes\n", got, total);
        return 1;
    }
    printf("{\"kind\":\"%s\",\"bytes\":%lld,\"buf\":%zu,\"cpus\":[%d,%d],\"wall_s\":%.6f,"
           "\"writer_cpu_s\":%.6f,\"reader_cpu_s\":%.6f}\n",
           tcp ? "tcp" : "unix", total, buf, wcpu, rcpu, wall, wc, rc);
    return 0;
}
