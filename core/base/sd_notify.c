/*
 * sd_notify.c -- systemd's readiness protocol without libsystemd; see
 * sd_notify.h.
 */
#include "base/sd_notify.h"
#include "base/log.h"

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int moxy_sd_notify(const char *state)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path) return MOXY_OK;

    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t len = strlen(path);
    /* Only paths and abstract names: systemd 256+ may also name an AF_VSOCK
     * address ("vsock:CID:PORT"), which a service on a host never gets. */
    if ((path[0] != '/' && path[0] != '@') || len < 2 || len >= sizeof(sa.sun_path)) {
        moxy_log_warn("NOTIFY_SOCKET=%s: not a unix socket path or @abstract name", path);
        errno = EAFNOSUPPORT;
        return MOXY_ERROR;
    }
    memcpy(sa.sun_path, path, len);
    /* An abstract name starts with a NUL and is exactly len bytes long: no
     * terminating NUL counts, or the kernel looks up another name. */
    if (path[0] == '@') sa.sun_path[0] = '\0';
    socklen_t salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);

    size_t n = strlen(state);
    ssize_t sent = -1;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd >= 0) {
        sent = sendto(fd, state, n, MSG_NOSIGNAL, (struct sockaddr *)&sa, salen);
        int e = errno;
        close(fd);
        errno = e;
    }
    if (sent == (ssize_t)n) return MOXY_OK;
    if (sent >= 0) errno = EMSGSIZE; /* cannot happen: a datagram goes whole or not at all */
    int saved = errno;
    moxy_log_warn("cannot notify systemd at %s: %s", path, strerror(saved));
    errno = saved;
    return MOXY_ERROR;
}

int moxy_sd_notifyf(const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(buf)) {
        moxy_log_warn("systemd notification too long (%d bytes)", n);
        errno = EMSGSIZE;
        return MOXY_ERROR;
    }
    return moxy_sd_notify(buf);
}
