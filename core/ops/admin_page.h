/*
 * admin_page.h -- the admin listener's status page (admin/status.html, .js
 * and .css), built into the binary: GET / on the admin listener.
 */
#ifndef MOXY_ADMIN_PAGE_H
#define MOXY_ADMIN_PAGE_H

#include <stddef.h>

/* One file of the page. */
typedef struct {
    const char *path; /* as requested: "/", "/status.js", "/status.css" */
    const char *type; /* its Content-Type */
    const char *data; /* its bytes (static, read-only; not NUL-terminated) */
    size_t len;
} moxy_admin_asset_t;

/* The file of the page served at path, or NULL. */
const moxy_admin_asset_t *moxy_admin_asset(const char *path);

/* The Content-Security-Policy the page is served with: its own script,
 * style and requests (GET /status, /history, POST /peers/...), nothing else. */
extern const char moxy_admin_page_csp[];

#endif
