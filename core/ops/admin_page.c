/*
 * admin_page.c -- the status page's files, embedded at build time (see
 * admin_page.h).
 *
 * The assembler's .incbin copies admin/status.{html,js,css} into .rodata, with a
 * 64-bit length after each (the Makefile compiles from the repository's root,
 * which is where the paths are looked up, and rebuilds this file when one of
 * them changes).  No generated source, no tool beyond gcc's assembler.
 */
#include "ops/admin_page.h"

#include <stdint.h>
#include <string.h>

#define EMBED(sym, file)                                                                           \
    __asm__(".pushsection .rodata\n"                                                               \
            ".global " #sym "\n"                                                                   \
            ".type " #sym ", @object\n"                                                            \
            ".balign 16\n" #sym ":\n"                                                              \
            ".incbin \"" file "\"\n"                                                               \
            "1:\n"                                                                                 \
            ".size " #sym ", 1b - " #sym "\n"                                                      \
            ".global " #sym "_len\n"                                                               \
            ".type " #sym "_len, @object\n"                                                        \
            ".balign 8\n" #sym "_len:\n"                                                           \
            ".8byte 1b - " #sym "\n"                                                               \
            ".size " #sym "_len, 8\n"                                                              \
            ".popsection\n");                                                                      \
    extern const char sym[];                                                                       \
    extern const uint64_t sym##_len

EMBED(moxy_admin_html, "admin/status.html");
EMBED(moxy_admin_js, "admin/status.js");
EMBED(moxy_admin_css, "admin/status.css");

const char moxy_admin_page_csp[] =
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const moxy_admin_asset_t *moxy_admin_asset(const char *path)
{
    static moxy_admin_asset_t assets[3];
    if (!assets[0].path) {
        assets[0] = (moxy_admin_asset_t){"/", "text/html; charset=utf-8", moxy_admin_html,
                                         moxy_admin_html_len};
        assets[1] = (moxy_admin_asset_t){"/status.js", "text/javascript; charset=utf-8",
                                         moxy_admin_js, moxy_admin_js_len};
        assets[2] = (moxy_admin_asset_t){"/status.css", "text/css; charset=utf-8", moxy_admin_css,
                                         moxy_admin_css_len};
    }
    for (size_t i = 0; i < sizeof(assets) / sizeof(assets[0]); i++)
        if (strcmp(path, assets[i].path) == 0) return &assets[i];
    return NULL;
}
