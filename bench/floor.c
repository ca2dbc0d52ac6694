/* floor.c: the least a server can do per request, the measuring stick for "close to the limit".
 *
 *   gcc -O2 -o /tmp/floor bench/floor.c && /tmp/floor LINE_PORT FRAME_PORT   (port 0: any free)
 *
 * One thread, one edge-triggered epoll set, both listeners on 127.0.0.1. Per readable
 * connection: ONE read into a 64 KiB buffer, the replies into a static output buffer, ONE write.
 * Line port: PING -> PONG, PING x -> PONG x (case-insensitive), other lines echoed; one \r
 * before the \n dropped. Frame port: Heartbeat echoed byte for byte, Message -> "Server says: "
 * + body, Login -> LoginAck "OK"; bad magic/version or any other command: close.
 * A request split across reads is kept in a 4 KiB per-connection carry (longer: close). A read
 * that filled the buffer is repeated (edge-triggered: it may not have drained the socket). A
 * short write keeps the rest and stops reading until EPOLLOUT drains it. No limits, no timers,
 * no fairness, no logging; SIGINT/SIGTERM take their default action, SIGPIPE is ignored. */
#define _GNU_SOURCE /* accept4 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define IN_SIZE (64 * 1024)
#define CARRY 4096
enum { LINE, FRAME };
struct conn { int fd, kind, listener, rdhup; size_t carry_len, pending_len; char *pending; char carry[CARRY]; };

static char in[CARRY + IN_SIZE];
static char out[3 * (CARRY + IN_SIZE)]; /* worst case: an empty Message, 8 bytes in, 21 out */
static int ep;

/* Answers every complete line in p[0..n) into out[*o..]; returns the bytes consumed. */
static size_t do_lines(const char *p, size_t n, size_t *o) {
    size_t start = 0;
    for (const char *nl; (nl = memchr(p + start, '\n', n - start)); start = nl - p + 1) {
        size_t len = nl - (p + start);
        if (len && p[start + len - 1] == '\r') len--;
        memcpy(out + *o, p + start, len);
        if (len >= 4 && !strncasecmp(p + start, "PING", 4) && (len == 4 || p[start + 4] == ' '))
            memcpy(out + *o, "PONG", 4);
        *o += len;
        out[(*o)++] = '\n';
    }
    return start;
}

/* Answers every complete frame in p[0..n) into out[*o..]; returns the bytes consumed. */
static size_t do_frames(const unsigned char *p, size_t n, size_t *o, int *bad) {
    size_t start = 0;
    while (n - start >= 8) {
        const unsigned char *h = p + start;
        uint32_t len = (uint32_t)h[4] << 24 | h[5] << 16 | h[6] << 8 | h[7];
        if (h[0] != 0x47 || h[1] != 0x4F || h[2] != 1 || h[3] > 2) { *bad = 1; break; }
        if (n - start - 8 < len) break;
        if (h[3] == 0) { memcpy(out + *o, h, 8 + len); *o += 8 + len; }
        else if (h[3] == 1) {
            uint32_t rl = len + 13;
            unsigned char rh[8] = {0x47, 0x4F, 1, 1, rl >> 24, rl >> 16, rl >> 8, rl};
            memcpy(out + *o, rh, 8);
            memcpy(out + *o + 8, "Server says: ", 13);
            memcpy(out + *o + 21, h + 8, len);
            *o += 21 + len;
        } else { memcpy(out + *o, "GO\x01\x03\0\0\0\x02OK", 10); *o += 10; }
        start += 8 + len;
    }
    return start;
}

static void close_conn(struct conn *c) { close(c->fd); free(c->pending); free(c); }

/* Writes what is pending; 0 when all is written, 1 when some is left, -1 on error. */
static int flush_pending(struct conn *c) {
    ssize_t w = write(c->fd, c->pending, c->pending_len);
    if (w < 0) return errno == EAGAIN ? 1 : -1;
    memmove(c->pending, c->pending + w, c->pending_len - w);
    c->pending_len -= w;
    if (c->pending_len) return 1;
    free(c->pending); c->pending = NULL;
    return 0;
}

static void on_readable(struct conn *c) {
    for (;;) {
        size_t room = IN_SIZE, used, o = 0;
        int bad = 0;
        memcpy(in, c->carry, c->carry_len);
        ssize_t n = read(c->fd, in + c->carry_len, room);
        if (n < 0 && errno == EAGAIN) return;
        if (n <= 0) { close_conn(c); return; }
        size_t total = c->carry_len + n;
        used = c->kind == LINE ? do_lines(in, total, &o) : do_frames((unsigned char *)in, total, &o, &bad);
        c->carry_len = total - used;
        if (c->carry_len > CARRY) bad = 1;
        else memcpy(c->carry, in + used, c->carry_len);
        if (o) {
            ssize_t w = write(c->fd, out, o);
            if (w < 0 && errno != EAGAIN) { close_conn(c); return; }
            if (w < 0) w = 0;
            if ((size_t)w < o) { /* socket buffer full: keep the rest, wait for EPOLLOUT */
                c->pending_len = o - w;
                c->pending = malloc(c->pending_len);
                memcpy(c->pending, out + w, c->pending_len);
                if (bad) close_conn(c); /* best effort: the rest is lost */
                return;
            }
        }
        if (bad) { close_conn(c); return; }
        /* A short read drained the socket at that moment, unless a FIN came with the data:
         * then no new edge will come, so read on to the 0 that closes. */
        if ((size_t)n < room && !c->rdhup) return;
    }
}

static struct conn *listen_on(const char *port, int kind) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(port))};
    socklen_t alen = sizeof a;
    int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) || listen(fd, SOMAXCONN)) { perror("bind"); exit(1); }
    getsockname(fd, (struct sockaddr *)&a, &alen);
    fprintf(stderr, "%s listener on 127.0.0.1:%d\n", kind == LINE ? "line" : "frame", ntohs(a.sin_port));
    struct conn *l = calloc(1, sizeof *l);
    l->fd = fd; l->kind = kind; l->listener = 1;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.ptr = l};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    return l;
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: %s LINE_PORT FRAME_PORT\n", argv[0]); return 2; }
    signal(SIGPIPE, SIG_IGN); /* a write to a reset peer is an error, not the end of the server */
    signal(SIGINT, SIG_DFL);  /* even if inherited ignored, as `cmd &` in a script does */
    signal(SIGTERM, SIG_DFL);
    ep = epoll_create1(0);
    listen_on(argv[1], LINE);
    listen_on(argv[2], FRAME);
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            c->rdhup |= !!(evs[i].events & EPOLLRDHUP);
            if (c->listener) {
                int fd, one = 1;
                while ((fd = accept4(c->fd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct conn *nc = calloc(1, sizeof *nc);
                    nc->fd = fd; nc->kind = c->kind;
                    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = nc};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
                }
                continue;
            }
            if (c->pending) {
                int r = flush_pending(c);
                if (r < 0) { close_conn(c); continue; }
                if (r > 0) continue; /* still full: do not read until it drains */
                on_readable(c);      /* input may have arrived while we did not read */
            } else if (evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
                on_readable(c);
            }
        }
    }
}
