/* The floor on this machine: what the system calls of a fan-out and of a handshake cost alone.
 *
 *   cc -O2 -o floor floor.c && ./floor fanout N ROUNDS   # send() of one frame to N loopback sockets
 *                              ./floor handshake COUNT   # accept, recv, send 101, recv close, send, close
 *
 * The measured side is this process (server CPU from getrusage, user + system, which includes the
 * kernel's loopback delivery done in the sender's context); a forked child holds or drives the other
 * ends, so each process stays under the open-file limit. Prints one JSON line.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double cpu_seconds(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_utime.tv_sec + u.ru_stime.tv_sec + (u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int listener(struct sockaddr_in *addr) {
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    socklen_t len = sizeof(*addr);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    memset(addr, 0, sizeof(*addr));
    addr->sin_family = AF_INET;
    addr->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)addr, sizeof(*addr)) || listen(fd, 4096)) { perror("listen"); exit(1); }
    getsockname(fd, (struct sockaddr *)addr, &len);
    return fd;
}

static int dial(struct sockaddr_in *addr, int source) {
    struct sockaddr_in local = {.sin_family = AF_INET};
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    local.sin_addr.s_addr = htonl(0x7f000000 | (unsigned)source); /* 127.0.0.x: ports per source */
    bind(fd, (struct sockaddr *)&local, sizeof(local));
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, (struct sockaddr *)addr, sizeof(*addr))) { perror("connect"); exit(1); }
    return fd;
}

static void raise_files(void) {
    struct rlimit r;
    getrlimit(RLIMIT_NOFILE, &r);
    r.rlim_cur = r.rlim_max;
    setrlimit(RLIMIT_NOFILE, &r);
}

/* One 138-byte text frame (the bench's {"seq": 0, "data": "x"*128}) to each of n sockets, rounds times. */
static int fanout(int n, int rounds) {
    struct sockaddr_in addr;
    int lfd = listener(&addr), *fds = calloc(n, sizeof(int)), one = 1;
    unsigned char frame[160];
    size_t len = 0;
    const char *head = "{\"seq\": 0, \"data\": \"";
    pid_t child = fork();
    if (child == 0) { /* holds the receiving ends, never reads: 150 bytes x rounds fits the buffers */
        int *mine = calloc(n, sizeof(int));
        for (int i = 0; i < n; i++) mine[i] = dial(&addr, 20 + i / 20000);
        pause();
        _exit(0);
    }
    for (int i = 0; i < n; i++) {
        fds[i] = accept(lfd, NULL, NULL);
        setsockopt(fds[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    frame[len++] = 0x81;
    frame[len++] = 0;
    memcpy(frame + len, head, strlen(head)), len += strlen(head);
    memset(frame + len, 'x', 128), len += 128;
    memcpy(frame + len, "\"}", 2), len += 2;
    frame[1] = (unsigned char)(len - 2);
    double best = 0, total_cpu = 0, total_wall = 0;
    for (int r = 0; r < rounds; r++) {
        double c0 = cpu_seconds(), t0 = now();
        for (int i = 0; i < n; i++)
            if (send(fds[i], frame, len, MSG_NOSIGNAL | MSG_DONTWAIT) != (ssize_t)len) { perror("send"); exit(1); }
        double cpu = cpu_seconds() - c0, wall = now() - t0;
        total_cpu += cpu, total_wall += wall;
        if (r == 0 || wall < best) best = wall;
    }
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    printf("{\"mode\": \"fanout\", \"sockets\": %d, \"rounds\": %d, \"frame_bytes\": %zu, \"cpu_us_per_msg\": %.3f, "
           "\"wall_us_per_msg\": %.3f, \"ms_per_round_best\": %.3f}\n",
           n, rounds, len, total_cpu / rounds / n * 1e6, total_wall / rounds / n * 1e6, best * 1e3);
    return 0;
}

/* count handshakes one after the other: the server's system calls for each, the 101 precomputed. */
static int handshake(int count) {
    struct sockaddr_in addr;
    int lfd = listener(&addr);
    char buf[4096];
    static const char request[] =
        "GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    static const char response[] =
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
    static const unsigned char close_frame[] = {0x88, 0x82, 1, 2, 3, 4, 0x03 ^ 1, 0xe8 ^ 2};
    static const unsigned char close_reply[] = {0x88, 0x02, 0x03, 0xe8};
    pid_t child = fork();
    if (child == 0) { /* the client: open, upgrade, close frame, wait for the server's close */
        for (int i = 0; i < count; i++) {
            int fd = dial(&addr, 20 + i % 200);
            send(fd, request, sizeof(request) - 1, MSG_NOSIGNAL);
            recv(fd, buf, sizeof(buf), 0);
            send(fd, close_frame, sizeof(close_frame), MSG_NOSIGNAL);
            while (recv(fd, buf, sizeof(buf), 0) > 0) {}
            close(fd);
        }
        _exit(0);
    }
    double c0 = cpu_seconds(), t0 = now();
    for (int i = 0; i < count; i++) {
        int fd = accept(lfd, NULL, NULL), one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        recv(fd, buf, sizeof(buf), 0);
        send(fd, response, sizeof(response) - 1, MSG_NOSIGNAL);
        recv(fd, buf, sizeof(buf), 0);
        send(fd, close_reply, sizeof(close_reply), MSG_NOSIGNAL);
        close(fd);
    }
    double cpu = cpu_seconds() - c0, wall = now() - t0;
    waitpid(child, NULL, 0);
    printf("{\"mode\": \"handshake\", \"count\": %d, \"cpu_us_each\": %.2f, \"per_second\": %.0f}\n", count,
           cpu / count * 1e6, count / wall);
    return 0;
}

int main(int argc, char **argv) {
    raise_files();
    if (argc >= 4 && !strcmp(argv[1], "fanout")) return fanout(atoi(argv[2]), atoi(argv[3]));
    if (argc >= 3 && !strcmp(argv[1], "handshake")) return handshake(atoi(argv[2]));
    fprintf(stderr, "usage: floor fanout N ROUNDS | floor handshake COUNT\n");
    return 2;
}
