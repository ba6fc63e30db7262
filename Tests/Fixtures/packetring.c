/*
 * packetring: AF_PACKET sockets with mapped rings (PACKET_RX_RING/TX_RING),
 * bound to lo for ethertype 0x88b5 (local experimental: nothing else sends it).
 * Meant to run in a network namespace of its own (lo up).
 *
 *   (no argument)  v2: SOCK_RAW, TPACKET_V2, PACKET_RESERVE 32, an RX ring
 *                  (16 frames) and a TX ring (4 frames), mapped together
 *                  read-write; v3: SOCK_RAW, TPACKET_V3 RX ring (retire
 *                  20 ms, 16 bytes private per block); v1: SOCK_DGRAM,
 *                  TPACKET_V1 RX ring mapped read-only; v3tx: TPACKET_V3
 *                  TX ring; idle: a V2 TX ring set up, never mapped.
 *                  After SIGTERM: each mapping is where it was with its
 *                  protection and is the socket's (socket:[inode of the fd]),
 *                  options read back equal, idle's ring maps at its size and
 *                  not larger, a frame v2 sends from its TX ring lands in
 *                  frame 0 of v2's RX ring, in block 0 of v3's, in frame 0
 *                  of v1's; one v3tx sends lands in v2's frame 1.
 *   unread         v2 (RX ring only) with a frame received, not read:
 *                  after SIGTERM the frame must still be there.
 *   unread3        v3 with a frame in its open block (retire 60 s).
 *   used           v2 that read and released one frame (its kernel is at
 *                  frame 1), waiting for the next.
 *                  priv: SOCK_DGRAM, TPACKET_V1 RX ring mapped MAP_PRIVATE
 *                  read-write, never written: it still sees the socket's frames.
 *   sent           v2 that sent one frame from its TX ring.
 *   privwritten    all of the first, priv's second page written (a private copy).
 * Dump must refuse the last five; the fixture runs on and passes.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include "fixture.h"

#define PROTO 0x88b5

static volatile sig_atomic_t term;
static void on_term(int sig) { (void)sig; term = 1; }
static void die(const char *what) { fprintf(stderr, "setup: %s: %s\n", what, strerror(errno)); exit(2); }

static void set_int(int fd, int option, int value, const char *name) {
    if (setsockopt(fd, SOL_PACKET, option, &value, sizeof(value)) != 0) die(name);
}

static int get_int(int fd, int option) {
    int value = -1;
    socklen_t length = sizeof(value);
    if (getsockopt(fd, SOL_PACKET, option, &value, &length) != 0) return -1000 - errno;
    return value;
}

struct ring_socket {
    const char *name;
    int fd;
    int version, reserve;
    unsigned char *map;
    size_t length;
    char perms[5];
    int ifindex, protocol;
};

/* Bound to lo; with protocol 0 it only sends (a socket that hears PROTO without an RX ring queues what it hears). */
static void bind_lo(struct ring_socket *s, int protocol) {
    struct sockaddr_ll address = { .sll_family = AF_PACKET, .sll_protocol = htons(protocol), .sll_ifindex = (int)if_nametoindex("lo") };
    if (bind(s->fd, (struct sockaddr *)&address, sizeof(address)) != 0) die("bind lo");
}

static void remember(struct ring_socket *s) {
    s->version = get_int(s->fd, PACKET_VERSION);
    s->reserve = get_int(s->fd, PACKET_RESERVE);
    struct sockaddr_ll address;
    socklen_t length = sizeof(address);
    memset(&address, 0, sizeof(address));
    if (getsockname(s->fd, (struct sockaddr *)&address, &length) != 0) die("getsockname");
    s->ifindex = address.sll_ifindex;
    s->protocol = address.sll_protocol;
}

static void map_ring_as(struct ring_socket *s, size_t length, int prot, int flags) {
    s->map = mmap(NULL, length, prot, flags, s->fd, 0);
    if (s->map == MAP_FAILED) die("mmap ring");
    s->length = length;
    snprintf(s->perms, sizeof(s->perms), "%c%c-%c", prot & PROT_READ ? 'r' : '-', prot & PROT_WRITE ? 'w' : '-', flags & MAP_SHARED ? 's' : 'p');
}

static void map_ring(struct ring_socket *s, size_t length, int prot) { map_ring_as(s, length, prot, MAP_SHARED); }

static struct ring_socket make(const char *name, int type, int version, int reserve) {
    struct ring_socket s = { .name = name, .version = version };
    s.fd = socket(AF_PACKET, type, 0);
    if (s.fd < 0) die("AF_PACKET");
    set_int(s.fd, PACKET_VERSION, version, "PACKET_VERSION");
    if (reserve) set_int(s.fd, PACKET_RESERVE, reserve, "PACKET_RESERVE");
    return s;
}

static void ring(struct ring_socket *s, int option, unsigned block, unsigned blocks, unsigned frame, unsigned tov, unsigned priv) {
    struct tpacket_req3 request = { .tp_block_size = block, .tp_block_nr = blocks, .tp_frame_size = frame,
                                    .tp_frame_nr = block / frame * blocks, .tp_retire_blk_tov = tov, .tp_sizeof_priv = priv };
    socklen_t length = s->version == TPACKET_V3 ? sizeof(request) : sizeof(struct tpacket_req);
    if (setsockopt(s->fd, SOL_PACKET, option, &request, length) != 0) die(option == PACKET_RX_RING ? "PACKET_RX_RING" : "PACKET_TX_RING");
}

/* The mapping is where it was, with its protection, and maps this socket. */
static void check_mapping(struct ring_socket *s) {
    struct stat st;
    if (fstat(s->fd, &st) != 0) { fail("%s: fstat: %s", s->name, strerror(errno)); return; }
    char want[64], line[512];
    snprintf(want, sizeof(want), "socket:[%lu]", (unsigned long)st.st_ino);
    FILE *maps = fopen("/proc/self/maps", "r");
    if (!maps) { fail("/proc/self/maps: %s", strerror(errno)); return; }
    int found = 0;
    while (fgets(line, sizeof(line), maps)) {
        unsigned long start, end;
        char perms[5];
        if (sscanf(line, "%lx-%lx %4s", &start, &end, perms) != 3 || start != (unsigned long)s->map) continue;
        found = 1;
        if (end - start != s->length) fail("%s: mapping at %p is %lu bytes, was %zu", s->name, s->map, end - start, s->length);
        if (strcmp(perms, s->perms) != 0) fail("%s: mapping at %p is %s, was %s", s->name, s->map, perms, s->perms);
        if (!strstr(line, want)) fail("%s: mapping at %p is not %s: %s", s->name, s->map, want, line);
    }
    fclose(maps);
    if (!found) fail("%s: nothing mapped at %p any more", s->name, s->map);
}

static void check_options(struct ring_socket *s) {
    struct ring_socket now = *s;
    remember(&now);
    if (now.version != s->version) fail("%s: PACKET_VERSION %d, was %d", s->name, now.version, s->version);
    if (now.reserve != s->reserve) fail("%s: PACKET_RESERVE %d, was %d", s->name, now.reserve, s->reserve);
    if (now.ifindex != s->ifindex || now.protocol != s->protocol)
        fail("%s: bound to %d protocol 0x%x, was %d 0x%x", s->name, now.ifindex, ntohs(now.protocol), s->ifindex, ntohs(s->protocol));
}

/* An Ethernet frame to lo (addresses 0) of PROTO carrying `text`, into `at`: its length. */
static unsigned frame_bytes(unsigned char *at, const char *text) {
    memset(at, 0, 14);
    at[12] = PROTO >> 8;
    at[13] = PROTO & 0xff;
    strcpy((char *)at + 14, text);
    return 14 + (unsigned)strlen(text) + 1;
}

/* Sends `text` from TX frame 0 of a ring at `tx` (V2 or V3 header) and waits for the kernel to take it. */
static int send_from_ring(int fd, int version, unsigned char *tx, const char *text) {
    volatile uint32_t *status;
    if (version == TPACKET_V2) {
        struct tpacket2_hdr *h = (struct tpacket2_hdr *)tx;
        unsigned char *data = tx + TPACKET2_HDRLEN - sizeof(struct sockaddr_ll);
        h->tp_len = frame_bytes(data, text);
        status = &h->tp_status;
    } else {
        struct tpacket3_hdr *h = (struct tpacket3_hdr *)tx;
        unsigned char *data = tx + TPACKET3_HDRLEN - sizeof(struct sockaddr_ll);
        h->tp_len = frame_bytes(data, text);
        h->tp_next_offset = 0;
        status = &h->tp_status;
    }
    __atomic_store_n(status, TP_STATUS_SEND_REQUEST, __ATOMIC_RELEASE);
    if (send(fd, NULL, 0, 0) < 0) { fail("send from the TX ring: %s", strerror(errno)); return -1; }
    for (int i = 0; i < 200 && __atomic_load_n(status, __ATOMIC_ACQUIRE) != TP_STATUS_AVAILABLE; i++) usleep(10000);
    if (*status != TP_STATUS_AVAILABLE) { fail("TX frame 0 still has status 0x%x", *status); return -1; }
    return 0;
}

/* Waits for frame `index` of a V1/V2 RX ring of `frames_per_block` frames to be the task's, then looks for `text` in it. */
static void expect_frame(struct ring_socket *s, unsigned block, unsigned frame, int index, const char *text) {
    unsigned char *at = s->map + (index / (block / frame)) * block + (index % (block / frame)) * frame;
    volatile unsigned long *status1 = (unsigned long *)at;
    volatile uint32_t *status2 = (uint32_t *)at;
    for (int i = 0; i < 200; i++) {
        unsigned long status = s->version == TPACKET_V1 ? *status1 : *status2;
        if (status & TP_STATUS_USER) break;
        usleep(10000);
    }
    unsigned long status = s->version == TPACKET_V1 ? *status1 : *status2;
    if (!(status & TP_STATUS_USER)) { fail("%s: frame %d of its RX ring never filled (status 0x%lx)", s->name, index, status); return; }
    if (!memmem(at, frame, text, strlen(text))) fail("%s: frame %d of its RX ring lacks \"%s\"", s->name, index, text);
}

static void expect_block(struct ring_socket *s, unsigned block, const char *text, int want_packets) {
    struct tpacket_block_desc *b = (struct tpacket_block_desc *)s->map;
    for (int i = 0; i < 300 && !(__atomic_load_n(&b->hdr.bh1.block_status, __ATOMIC_ACQUIRE) & TP_STATUS_USER); i++) usleep(10000);
    if (!(b->hdr.bh1.block_status & TP_STATUS_USER)) { fail("%s: block 0 never handed over (num_pkts %u)", s->name, b->hdr.bh1.num_pkts); return; }
    if ((int)b->hdr.bh1.num_pkts < want_packets) fail("%s: block 0 holds %u packets, want %d", s->name, b->hdr.bh1.num_pkts, want_packets);
    if (!memmem(s->map, block, text, strlen(text))) fail("%s: block 0 lacks \"%s\"", s->name, text);
}

static void send_plain(const char *text) {
    int fd = socket(AF_PACKET, SOCK_RAW, 0);
    if (fd < 0) die("sender");
    unsigned char buffer[128];
    unsigned length = frame_bytes(buffer, text);
    struct sockaddr_ll to = { .sll_family = AF_PACKET, .sll_protocol = htons(PROTO), .sll_ifindex = (int)if_nametoindex("lo"), .sll_halen = 6 };
    if (sendto(fd, buffer, length, 0, (struct sockaddr *)&to, sizeof(to)) != (ssize_t)length) die("sendto lo");
    close(fd);
}

static int finish(void) {
    if (failbuf[0]) { printf("FAIL: %s\n", failbuf); fflush(stdout); return 1; }
    printf("PASS\n");
    fflush(stdout);
    return 0;
}

static int refused(const char *mode) {
    int v3 = strcmp(mode, "unread3") == 0;
    struct ring_socket s = make(mode, SOCK_RAW, v3 ? TPACKET_V3 : TPACKET_V2, 0);
    int sent = strcmp(mode, "sent") == 0;
    if (sent) {
        ring(&s, PACKET_TX_RING, 4096, 1, 2048, 0, 0);
        bind_lo(&s, 0);
        map_ring(&s, 4096, PROT_READ | PROT_WRITE);
        if (send_from_ring(s.fd, TPACKET_V2, s.map, "cryo-sent") != 0) die(failbuf);
    } else {
        ring(&s, PACKET_RX_RING, 8192, 2, 2048, v3 ? 60000 : 0, 0);
        bind_lo(&s, PROTO);
        map_ring(&s, 2 * 8192, PROT_READ | PROT_WRITE);
        send_plain("cryo-unread");
        if (v3) {
            struct tpacket_block_desc *b = (struct tpacket_block_desc *)s.map;
            for (int i = 0; i < 200 && __atomic_load_n(&b->hdr.bh1.num_pkts, __ATOMIC_ACQUIRE) == 0; i++) usleep(10000);
            if (b->hdr.bh1.num_pkts != 1 || b->hdr.bh1.block_status != TP_STATUS_KERNEL) die("v3: the frame is not in the open block");
        } else {
            expect_frame(&s, 8192, 2048, 0, "cryo-unread");
            if (strcmp(mode, "used") == 0) __atomic_store_n((uint32_t *)s.map, TP_STATUS_KERNEL, __ATOMIC_RELEASE);
        }
    }
    if (failbuf[0]) die(failbuf);
    signal(SIGTERM, on_term);
    ready_then_wait(&term);
    /* A refused dump took nothing: what was there still is, and the ring goes on. */
    if (strcmp(mode, "unread") == 0) {
        expect_frame(&s, 8192, 2048, 0, "cryo-unread");
    } else if (v3) {
        struct tpacket_block_desc *b = (struct tpacket_block_desc *)s.map;
        if (b->hdr.bh1.num_pkts != 1) fail("v3: the open block holds %u packets, want 1", b->hdr.bh1.num_pkts);
    } else if (strcmp(mode, "used") == 0) {
        send_plain("cryo-next");
        expect_frame(&s, 8192, 2048, 1, "cryo-next");
    } else if (sent) {
        /* The kernel takes frame 1 next. */
        struct tpacket2_hdr *h = (struct tpacket2_hdr *)(s.map + 2048);
        h->tp_len = frame_bytes(s.map + 2048 + TPACKET2_HDRLEN - sizeof(struct sockaddr_ll), "cryo-sent-again");
        __atomic_store_n(&h->tp_status, TP_STATUS_SEND_REQUEST, __ATOMIC_RELEASE);
        if (send(s.fd, NULL, 0, 0) < 0) fail("send frame 1: %s", strerror(errno));
        else if (h->tp_status != TP_STATUS_AVAILABLE) fail("frame 1 was not sent (status 0x%x)", h->tp_status);
    }
    return finish();
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc > 1 && strcmp(argv[1], "privwritten") != 0) return refused(argv[1]);

    struct ring_socket v2 = make("v2", SOCK_RAW, TPACKET_V2, 32);
    ring(&v2, PACKET_RX_RING, 8192, 4, 2048, 0, 0);
    ring(&v2, PACKET_TX_RING, 4096, 2, 2048, 0, 0);
    bind_lo(&v2, PROTO);
    map_ring(&v2, 4 * 8192 + 2 * 4096, PROT_READ | PROT_WRITE);

    struct ring_socket v3 = make("v3", SOCK_RAW, TPACKET_V3, 0);
    ring(&v3, PACKET_RX_RING, 8192, 4, 2048, 20, 16);
    bind_lo(&v3, PROTO);
    map_ring(&v3, 4 * 8192, PROT_READ | PROT_WRITE);

    struct ring_socket v1 = make("v1", SOCK_DGRAM, TPACKET_V1, 0);
    ring(&v1, PACKET_RX_RING, 4096, 2, 1024, 0, 0);
    bind_lo(&v1, PROTO);
    map_ring(&v1, 2 * 4096, PROT_READ);

    struct ring_socket v3tx = make("v3tx", SOCK_RAW, TPACKET_V3, 0);
    ring(&v3tx, PACKET_TX_RING, 4096, 2, 2048, 0, 0);
    bind_lo(&v3tx, 0);
    map_ring(&v3tx, 2 * 4096, PROT_READ | PROT_WRITE);

    struct ring_socket idle = make("idle", SOCK_RAW, TPACKET_V2, 0);
    ring(&idle, PACKET_TX_RING, 4096, 3, 4096, 0, 0);

    struct ring_socket priv = make("priv", SOCK_DGRAM, TPACKET_V1, 0);
    ring(&priv, PACKET_RX_RING, 4096, 2, 1024, 0, 0);
    bind_lo(&priv, PROTO);
    map_ring_as(&priv, 2 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE);
    if (argc > 1 && strcmp(argv[1], "privwritten") == 0) priv.map[4096 + 100] = 1; /* a private copy of the second page */

    struct ring_socket *all[] = { &v2, &v3, &v1, &v3tx, &idle, &priv };
    for (unsigned i = 0; i < sizeof(all) / sizeof(all[0]); i++) remember(all[i]);

    signal(SIGTERM, on_term);
    ready_then_wait(&term);

    for (unsigned i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
        check_options(all[i]);
        if (all[i]->map) check_mapping(all[i]);
    }
    void *at = mmap(NULL, 4 * 4096, PROT_READ, MAP_SHARED, idle.fd, 0);
    if (at != MAP_FAILED) fail("idle: its TX ring maps 4 pages: it was 3");
    at = mmap(NULL, 3 * 4096, PROT_READ, MAP_SHARED, idle.fd, 0);
    if (at == MAP_FAILED) fail("idle: its TX ring of 3 pages does not map: %s", strerror(errno));

    if (send_from_ring(v2.fd, TPACKET_V2, v2.map + 4 * 8192, "cryo-ring-v2") == 0) {
        expect_frame(&v2, 8192, 2048, 0, "cryo-ring-v2");
        expect_block(&v3, 8192, "cryo-ring-v2", 1);
        expect_frame(&v1, 4096, 1024, 0, "cryo-ring-v2");
        expect_frame(&priv, 4096, 1024, 0, "cryo-ring-v2");
    }
    if (send_from_ring(v3tx.fd, TPACKET_V3, v3tx.map, "cryo-ring-v3tx") == 0) expect_frame(&v2, 8192, 2048, 1, "cryo-ring-v3tx");
    return finish();
}
