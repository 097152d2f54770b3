/* The C floor of socket_bench: one thread, epoll, a canned HTTP/1.1 answer per request. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

struct conn { int fd; size_t len; char buf[8192]; };

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    const char *pre = "{\"access_token\":\"", *post = "\",\"token_type\":\"Bearer\"}";
    size_t size = (size_t)atol(argv[2]), fixed = strlen(pre) + strlen(post);
    size_t fill = size > fixed ? size - fixed : 0, body = fixed + fill;
    char head[160];
    int hl = snprintf(head, sizeof head,
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %zu\r\n\r\n", body);
    size_t answer_len = (size_t)hl + body;
    char *answer = malloc(answer_len), *p = answer;
    memcpy(p, head, (size_t)hl); p += hl;
    memcpy(p, pre, strlen(pre)); p += strlen(pre);
    memset(p, 'a', fill); p += fill;
    memcpy(p, post, strlen(post));

    int listener = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strncpy(addr.sun_path, argv[1], sizeof addr.sun_path - 1);
    if (bind(listener, (struct sockaddr *)&addr, sizeof addr) || listen(listener, 128)) {
        perror("bind");
        return 1;
    }
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL}, events[64];
    epoll_ctl(ep, EPOLL_CTL_ADD, listener, &ev);
    for (;;) {
        int n = epoll_wait(ep, events, 64, -1);
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (!c) {
                int fd;
                while ((fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    struct conn *nc = calloc(1, sizeof *nc);
                    nc->fd = fd;
                    struct epoll_event cev = {.events = EPOLLIN, .data.ptr = nc};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
                }
                continue;
            }
            ssize_t r = read(c->fd, c->buf + c->len, sizeof c->buf - c->len);
            if (r <= 0) {
                if (r < 0 && errno == EAGAIN) continue;
                close(c->fd);
                free(c);
                continue;
            }
            c->len += (size_t)r;
            char *end;
            while (c->len >= 4 && (end = memmem(c->buf, c->len, "\r\n\r\n", 4))) {
                size_t used = (size_t)(end - c->buf) + 4;
                if (write(c->fd, answer, answer_len) < 0) break;
                memmove(c->buf, c->buf + used, c->len - used);
                c->len -= used;
            }
            if (c->len == sizeof c->buf) c->len = 0;
        }
    }
}
