/*
 * tls_client.c -- TLS to origins (see tls.h): a pool's client side (its
 * CAs, its client certificate), the process's default ones for moxy.http,
 * and a connection's start toward an origin.
 *
 * Sessions are resumed per peer, as nginx's proxy_ssl_session_reuse does:
 * each client context keeps, for each peer it connected to, the newest
 * session that peer gave (a TLS 1.2 session id or ticket, a TLS 1.3
 * ticket), and a new connection to the same peer offers it.  A peer is its
 * address (the connected socket's: IP and port) with the SNI and the name
 * the certificate is checked against, so a session is never offered to
 * another name or address.  OpenSSL's own client cache is off; sessions
 * arrive through its new-session callback (TLS 1.3 tickets after the
 * handshake, when the connection reads), only from a handshake that
 * verified when the context verifies.  A connection that sends or receives
 * a fatal alert takes its peer's session with it, as OpenSSL marks dead the
 * session of a connection that failed.
 *
 * OpenSSL uses a TLS 1.3 ticket once (it marks the session dead when the
 * handshake ends), and servers that issue no new ticket on resumption
 * (OpenSSL's, moxy's own) would then get every other connection in full:
 * a TLS 1.3 session is offered as a copy (SSL_SESSION_dup, one allocation
 * per resumed connection, against the full handshake's many), and the kept
 * one is reused until the peer gives a newer one, as nginx does.  RFC 8446
 * asks clients not to, for privacy (a ticket links connections to one
 * client); between one proxy and its origins that link is no secret.
 *
 * The store hangs on its SSL_CTX (extra data, freed with it) and is shared
 * by the workers' threads under a mutex: TLS_PEERS_MAX peers in sets of
 * TLS_PEER_WAYS chosen by a keyed hash of the peer (its names may come
 * from a script's URL, see siphash.h); a new peer takes its set's least
 * recently used place.  Sessions hold their ticket and the peer's
 * certificates: beyond TLS_STORE_BYTES (estimated) places give theirs up,
 * in turn.  A connection knows its place by a tag (SSL extra data: the
 * place's index and the id of the peer it held then), so a session that
 * arrives after the place went to another peer is dropped.
 */
#include "net/tls.h"
#include "net/tls_int.h"
#include "base/siphash.h"

#include <errno.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define TLS_PEERS_MAX 1024           /* peers one client context keeps a session for (a power of 2) */
#define TLS_PEER_WAYS 4              /* ... in sets of this many, by the peer's hash */
#define TLS_STORE_BYTES (16u << 20)  /* what one context's sessions may hold, estimated (session_cost) */
#define TLS_TICKET_MAX 16384         /* a session with a bigger ticket is not kept */
#define TLS_NAME_MAX 255             /* a longer SNI or host: the connection is not resumed */
#define TLS_KEY_MAX (1 + 2 + 16 + 4 + 2 * (2 + TLS_NAME_MAX))

/* --- sessions per peer --- */

/* One peer of a context and the session it gave last. */
typedef struct {
    uint64_t hash;           /* of key */
    uintptr_t id;            /* unique in its store: connections' tags name it */
    unsigned long long used; /* the store's clock when last offered or given a session */
    SSL_SESSION *sess;       /* the newest session, or NULL */
    size_t cost;             /* sess's estimated bytes (0 without one) */
    size_t klen;             /* key's bytes */
    unsigned char key[];     /* the peer, see peer_key */
} tls_peer_t;

typedef struct {
    pthread_mutex_t lock;
    tls_peer_t *places[TLS_PEERS_MAX]; /* set s: places[s * TLS_PEER_WAYS ...] */
    uintptr_t ids;                     /* the last id given (0: none) */
    unsigned long long clock;          /* ticks on each offer and each session kept */
    size_t bytes;                      /* the sessions' costs summed */
    unsigned sweep;                    /* the next place to give its session up when over TLS_STORE_BYTES */
} tls_store_t;

static int store_index = -1; /* SSL_CTX ex_data: its tls_store_t (freed with it) */
static int tag_index = -1;   /* SSL ex_data: the connection's place, as a tag (place_tag) */
static pthread_once_t index_once = PTHREAD_ONCE_INIT;

static uintptr_t place_tag(uintptr_t id, unsigned place)
{
    return id * TLS_PEERS_MAX + place;
}

static void peer_free(tls_peer_t *p)
{
    if (!p) return;
    SSL_SESSION_free(p->sess);
    free(p);
}

static void store_free_cb(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    MOXY_UNUSED(parent);
    MOXY_UNUSED(ad);
    MOXY_UNUSED(idx);
    MOXY_UNUSED(argl);
    MOXY_UNUSED(argp);
    tls_store_t *st = ptr;
    if (!st) return;
    for (int i = 0; i < TLS_PEERS_MAX; i++) peer_free(st->places[i]);
    pthread_mutex_destroy(&st->lock);
    free(st);
}

static void index_make(void)
{
    store_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, store_free_cb);
    tag_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
}

/* The store's key for a connection on fd asking for sni and checking host
 * into k (TLS_KEY_MAX bytes): the family, port and IP address of the peer
 * the socket is connected to, then each name as present (0/1), length,
 * bytes, so that no two (address, sni, host) share a key.  Its length, or
 * 0 when there is none (no IP peer, a name over TLS_NAME_MAX): such a
 * connection is neither offered a session nor keeps one. */
static size_t peer_key(int fd, const char *sni, const char *host, unsigned char *k)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    if (getpeername(fd, (struct sockaddr *)&ss, &sl) != 0) return 0;
    size_t n = 0;
    k[n++] = (unsigned char)ss.ss_family;
    if (ss.ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;
        memcpy(k + n, &a->sin_port, 2);
        memcpy(k + n + 2, &a->sin_addr, 4);
        n += 6;
    } else if (ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&ss;
        memcpy(k + n, &a->sin6_port, 2);
        memcpy(k + n + 2, &a->sin6_addr, 16);
        memcpy(k + n + 18, &a->sin6_scope_id, 4);
        n += 22;
    } else {
        return 0;
    }
    const char *names[2] = {sni, host};
    for (int i = 0; i < 2; i++) {
        size_t len = names[i] ? strlen(names[i]) : 0;
        if (len > TLS_NAME_MAX) return 0;
        k[n++] = names[i] != NULL;
        k[n++] = (unsigned char)len;
        memcpy(k + n, names[i] ? names[i] : "", len);
        n += len;
    }
    return n;
}

/* 1 when sess may be offered: OpenSSL has not marked it dead (its
 * connection failed) and its lifetime has not run out. */
static int session_alive(const SSL_SESSION *sess)
{
    if (!SSL_SESSION_is_resumable(sess)) return 0;
    long age = (long)time(NULL) - SSL_SESSION_get_time(sess);
    return age >= 0 && age < SSL_SESSION_get_timeout(sess);
}

/* Offer ssl the session of its peer (key) in st, a dead or expired one
 * dropped, and tag ssl with the peer's place, made for a new peer (its
 * set's least recently used place taken).  Out of memory: no session, no
 * tag. */
static void store_offer(tls_store_t *st, SSL *ssl, const unsigned char *key, size_t klen)
{
    uint64_t h = moxy_hash_keyed(key, klen);
    unsigned set = (unsigned)(h % (TLS_PEERS_MAX / TLS_PEER_WAYS)) * TLS_PEER_WAYS;
    SSL_SESSION *offer = NULL, *dead = NULL;
    tls_peer_t *gone = NULL;
    uintptr_t tag = 0;
    pthread_mutex_lock(&st->lock);
    unsigned place = set;
    tls_peer_t *p = NULL;
    for (unsigned i = set; i < set + TLS_PEER_WAYS; i++) {
        tls_peer_t *q = st->places[i];
        if (q && q->hash == h && q->klen == klen && memcmp(q->key, key, klen) == 0) {
            p = q;
            place = i;
            break;
        }
        if (st->places[place] && (!q || q->used < st->places[place]->used)) place = i;
    }
    if (!p && (p = malloc(sizeof(*p) + klen))) {
        gone = st->places[place];
        if (gone) st->bytes -= gone->cost;
        p->hash = h;
        p->id = ++st->ids;
        p->sess = NULL;
        p->cost = 0;
        p->klen = klen;
        memcpy(p->key, key, klen);
        st->places[place] = p;
    }
    if (p) {
        p->used = ++st->clock;
        tag = place_tag(p->id, place);
        if (p->sess && !session_alive(p->sess)) {
            dead = p->sess;
            st->bytes -= p->cost;
            p->sess = NULL;
            p->cost = 0;
        }
        if (p->sess && SSL_SESSION_up_ref(p->sess)) offer = p->sess;
    }
    pthread_mutex_unlock(&st->lock);
    peer_free(gone);
    SSL_SESSION_free(dead);
    if (tag && !SSL_set_ex_data(ssl, tag_index, (void *)tag)) ERR_clear_error();
    if (offer) {
        /* a TLS 1.3 session as a copy: OpenSSL marks the one it used dead */
        SSL_SESSION *use = offer;
        if (SSL_SESSION_get_protocol_version(offer) >= TLS1_3_VERSION) use = SSL_SESSION_dup(offer);
        if (use && !SSL_set_session(ssl, use)) ERR_clear_error();
        if (use != offer) SSL_SESSION_free(use);
        SSL_SESSION_free(offer); /* the SSL holds its own reference */
        ERR_clear_error();
    }
}

/* sess's estimated bytes: 1 KiB, its ticket, and for each of the peer's
 * certificates 4 KiB and twice its DER (OpenSSL 3 holds a parsed 1-2 KiB
 * certificate in 4-6 KiB): some 15 KiB for a usual chain of two.  0 when
 * its ticket is over TLS_TICKET_MAX: it is not kept. */
static size_t session_cost(const SSL *ssl, const SSL_SESSION *sess)
{
    const unsigned char *tick = NULL;
    size_t tlen = 0;
    SSL_SESSION_get0_ticket(sess, &tick, &tlen);
    if (tlen > TLS_TICKET_MAX) return 0;
    size_t cost = 1024 + tlen;
    STACK_OF(X509) *chain = SSL_get_peer_cert_chain(ssl);
    for (int i = 0; i < sk_X509_num(chain); i++) {
        int n = i2d_X509(sk_X509_value(chain, i), NULL);
        if (n > 0) cost += 4096 + 2 * (size_t)n;
    }
    return cost;
}

/* sess (a reference the caller gives) becomes the session of ssl's peer,
 * the one it had freed: 1.  0 when it is not kept (the caller still owns
 * it): ssl has no place or lost it to another peer, did not verify, or
 * sess is dead, too big, or the one kept already. */
static int store_keep(const SSL *ssl, SSL_SESSION *sess)
{
    tls_store_t *st = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), store_index);
    uintptr_t tag = (uintptr_t)SSL_get_ex_data(ssl, tag_index);
    if (!st || !tag) return 0;
    if (SSL_get_verify_mode(ssl) != SSL_VERIFY_NONE && SSL_get_verify_result(ssl) != X509_V_OK) return 0;
    if (!SSL_SESSION_is_resumable(sess)) return 0;
    size_t cost = session_cost(ssl, sess);
    if (cost == 0) return 0;
    unsigned place = (unsigned)(tag % TLS_PEERS_MAX);
    SSL_SESSION *old = NULL;
    int kept = 0;
    pthread_mutex_lock(&st->lock);
    tls_peer_t *p = st->places[place];
    if (p && p->id == tag / TLS_PEERS_MAX && p->sess != sess) {
        old = p->sess;
        st->bytes = st->bytes - p->cost + cost;
        p->sess = sess;
        p->cost = cost;
        p->used = ++st->clock;
        kept = 1;
        /* over budget: places after the last one swept give their sessions
         * up, this one's last (alone it always fits) */
        for (int n = 0; st->bytes > TLS_STORE_BYTES && n < TLS_PEERS_MAX; n++) {
            tls_peer_t *q = st->places[st->sweep];
            st->sweep = (st->sweep + 1) % TLS_PEERS_MAX;
            if (!q || q == p || !q->sess) continue;
            st->bytes -= q->cost;
            SSL_SESSION_free(q->sess);
            q->sess = NULL;
            q->cost = 0;
        }
    }
    pthread_mutex_unlock(&st->lock);
    SSL_SESSION_free(old);
    return kept;
}

/* OpenSSL's new-session callback: a session from a handshake, or a TLS 1.3
 * ticket read after one.  1: the store took sess. */
static int on_new_session(SSL *ssl, SSL_SESSION *sess)
{
    return store_keep(ssl, sess);
}

/* ssl's peer loses its session (ssl failed), if ssl still has its place. */
static void store_forget(const SSL *ssl)
{
    tls_store_t *st = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), store_index);
    uintptr_t tag = (uintptr_t)SSL_get_ex_data(ssl, tag_index);
    if (!st || !tag) return;
    SSL_SESSION *old = NULL;
    pthread_mutex_lock(&st->lock);
    tls_peer_t *p = st->places[tag % TLS_PEERS_MAX];
    if (p && p->id == tag / TLS_PEERS_MAX) {
        old = p->sess;
        st->bytes -= p->cost;
        p->sess = NULL;
        p->cost = 0;
    }
    pthread_mutex_unlock(&st->lock);
    SSL_SESSION_free(old);
}

/* OpenSSL's info callback: a fatal alert, sent or received, forgets the
 * peer's session.  A TLS 1.2 resumption whose server sent a new ticket is
 * kept here: OpenSSL marks the old session dead and calls no new-session
 * callback for the new one (it is not a new handshake). */
static void on_info(const SSL *ssl, int where, int ret)
{
    if ((where & SSL_CB_ALERT) && (ret >> 8) == SSL3_AL_FATAL) {
        store_forget(ssl);
        return;
    }
    if (!(where & SSL_CB_HANDSHAKE_DONE) || !SSL_session_reused(ssl) || SSL_version(ssl) >= TLS1_3_VERSION) return;
    SSL_SESSION *sess = SSL_get0_session(ssl);
    if (sess && SSL_SESSION_up_ref(sess) && !store_keep(ssl, sess)) SSL_SESSION_free(sess);
}

/* --- connections --- */

/* See tls.h.  Besides: c is offered the session its peer (c's address, sni,
 * host) gave last in cl's store, and keeps its place there for the sessions
 * it is given; a peer with no IP address or a name over TLS_NAME_MAX is
 * neither. */
int moxy_tls_connect(moxy_conn_t *c, moxy_tls_client_t *cl, const char *sni, const char *host)
{
    SSL_CTX *ctx = (SSL_CTX *)cl;
    tls_conn_t *t = moxy_tls_conn_new(c, ctx);
    if (!t) return MOXY_ERROR;
    int ok = 1;
    if (sni) ok = SSL_set_tlsext_host_name(t->ssl, sni) == 1;
    if (ok && host && SSL_CTX_get_verify_mode(ctx) != SSL_VERIFY_NONE) {
        X509_VERIFY_PARAM *vp = SSL_get0_param(t->ssl);
        X509_VERIFY_PARAM_set_hostflags(vp, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        /* an IP address is checked against the certificate's IP names */
        ok = X509_VERIFY_PARAM_set1_ip_asc(vp, host) == 1 || X509_VERIFY_PARAM_set1_host(vp, host, 0) == 1;
    }
    ERR_clear_error(); /* set1_ip_asc's refusal of a name */
    if (!ok) {
        moxy_tls_conn_free(t);
        return MOXY_ERROR;
    }
    tls_store_t *st = SSL_CTX_get_ex_data(ctx, store_index);
    unsigned char key[TLS_KEY_MAX];
    size_t klen = st ? peer_key(c->fd, sni, host, key) : 0;
    if (klen) store_offer(st, t->ssl, key, klen);
    SSL_set_connect_state(t->ssl);
    moxy_tls_conn_attach(c, t);
    return MOXY_OK;
}

int moxy_conn_idle_readable(moxy_conn_t *c)
{
    char byte;
    ssize_t n = moxy_conn_recv(c, &byte, 1);
    return !(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR));
}

moxy_tls_client_t *moxy_tls_client_new(const moxy_tls_origin_conf_t *oc, const char *where, FILE *err)
{
    pthread_once(&index_once, index_make);
    if (moxy_tls_bio_ready() != MOXY_OK || store_index < 0 || tag_index < 0) {
        fprintf(err, "%s: OpenSSL could not be set up\n", where);
        return NULL;
    }
    char msg[1200];
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        moxy_tls_ssl_fail(err, where);
        return NULL;
    }
    tls_store_t *st = calloc(1, sizeof(*st));
    if (!st || pthread_mutex_init(&st->lock, NULL) != 0) {
        free(st);
        fprintf(err, "%s: out of memory\n", where);
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (!SSL_CTX_set_ex_data(ctx, store_index, st)) { /* from here on freed with ctx */
        store_free_cb(NULL, st, NULL, 0, 0, NULL);
        fprintf(err, "%s: out of memory\n", where);
        SSL_CTX_free(ctx);
        return NULL;
    }
    /* sessions: kept per peer here, not in OpenSSL's cache (see above) */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, on_new_session);
    SSL_CTX_set_info_callback(ctx, on_info);
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_read_ahead(ctx, 1);
    static const unsigned char h1[] = "\x08http/1.1", h2[] = "\x02h2";
    if (oc->h2) SSL_CTX_set_alpn_protos(ctx, h2, sizeof(h2) - 1);
    else SSL_CTX_set_alpn_protos(ctx, h1, sizeof(h1) - 1);
    if (oc->verify) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
        int ok = oc->ca ? SSL_CTX_load_verify_locations(ctx, oc->ca, NULL) : SSL_CTX_set_default_verify_paths(ctx);
        if (ok != 1) {
            snprintf(msg, sizeof(msg), "%s.ca: cannot read CA certificates from %s", where,
                     oc->ca ? oc->ca : "the system's store");
            moxy_tls_ssl_fail(err, msg);
            SSL_CTX_free(ctx);
            return NULL;
        }
    }
    SSL_CTX_set_default_passwd_cb(ctx, moxy_tls_no_passphrase); /* an encrypted key fails, never prompts */
    if (oc->client_cert) {
        if (SSL_CTX_use_certificate_chain_file(ctx, oc->client_cert) != 1) {
            snprintf(msg, sizeof(msg), "%s.client_cert: cannot read a certificate from %s", where, oc->client_cert);
            moxy_tls_ssl_fail(err, msg);
            SSL_CTX_free(ctx);
            return NULL;
        }
        if (SSL_CTX_use_PrivateKey_file(ctx, oc->client_key, SSL_FILETYPE_PEM) != 1 ||
            SSL_CTX_check_private_key(ctx) != 1) {
            snprintf(msg, sizeof(msg), "%s.client_key: %s is not the key of %s", where, oc->client_key,
                     oc->client_cert);
            moxy_tls_ssl_fail(err, msg);
            SSL_CTX_free(ctx);
            return NULL;
        }
    }
    return (moxy_tls_client_t *)ctx;
}

static moxy_tls_client_t *default_clients[2];
static pthread_once_t default_once = PTHREAD_ONCE_INIT;

static void default_clients_make(void)
{
    for (int v = 0; v < 2; v++) {
        moxy_tls_origin_conf_t oc = {.verify = v};
        default_clients[v] = moxy_tls_client_new(&oc, "moxy.http", stderr);
    }
}

moxy_tls_client_t *moxy_tls_client_default(int verify)
{
    pthread_once(&default_once, default_clients_make);
    return default_clients[verify != 0];
}

void moxy_tls_client_free(moxy_tls_client_t *cl)
{
    SSL_CTX_free((SSL_CTX *)cl);
}
