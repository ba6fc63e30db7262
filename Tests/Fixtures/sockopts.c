/*
 * sockopts: socket options on TCP and UDP sockets, IPv4 and IPv6. Meant to
 * run in a network namespace of its own (lo up): it binds to addresses that
 * are not local (IP_FREEBIND) and joins multicast groups on lo.
 *
 *   (no argument)  listener   127.0.0.1, every SOL_SOCKET/TCP/IP option set,
 *                             a locked classic BPF filter, SO_RCVBUF locked
 *                  client     connected to it, TCP_CORK, SO_SNDBUF locked,
 *                             a filter of its own (not locked)
 *                  server     accepted (the listener's locked filter with it)
 *                  client6m   IPv6, IPV6_V6ONLY off, connected to the listener's
 *                             IPv4-mapped address (server6m accepted), with
 *                             IPv4-level IP_TOS and IP_TTL of its own
 *                  client6    IPv6, IPV6_V6ONLY off, connected to listener6 on
 *                             [::1] (server6 accepted)
 *                  md5        a listener on 127.0.0.2 with a TCP MD5 key for
 *                             127.0.0.0/8, md5client connected to it with its
 *                             key (md5server accepted): after restore a byte
 *                             crosses each way, a client with the key connects
 *                             and one without does not (its SYN is dropped)
 *                  rp1, rp2   an SO_REUSEPORT group of two listeners on one port,
 *                             rp1's SO_REUSEPORT turned off since
 *                  (free4 and udp4 also have SO_NO_CHECK)
 *                  unfree4    UDP bound to 192.0.2.2 with IP_FREEBIND, off since;
 *                  unfree6    UDP on [2001:db8::2] with IP_FREEBIND (the IPv4
 *                             level's name), off since
 *                  tfo        unbound: TCP_FASTOPEN_CONNECT, TCP_MAXSEG, clamp
 *                  free4      a listener on 192.0.2.1 (IP_FREEBIND: not local),
 *                             TCP_DEFER_ACCEPT, TCP_FASTOPEN with a key and a
 *                             backup key of its own, SO_INCOMING_CPU, TCP_WINDOW_CLAMP,
 *                             TCP_QUICKACK, TCP_MAXSEG, TCP_SAVE_SYN, TX_DELAY,
 *                             RTO and delayed-ACK bounds, busy polling
 *                  free6      a listener on [2001:db8::1] (IPV6_FREEBIND,
 *                             IPV6_V6ONLY, IPV6_TCLASS, IPV6_UNICAST_HOPS)
 *                  udp4       bound, SO_BROADCAST, SO_REUSEPORT,
 *                             IP_TRANSPARENT, multicast (one group of any
 *                             source, one source-specific), UDP_CORK with
 *                             nothing pending, shut down for reading
 *                  udp6       connected, an IPv6 group, IPV6_MULTICAST_*, the
 *                             IPv4 level's IP_MULTICAST_TTL/LOOP/IF and IP_TOS,
 *                             source preferences, shut down for writing
 *                  (the listener also has a 64-bit SO_MAX_PACING_RATE,
 *                  SO_TXREHASH 0, IP_MINTTL; tfo an IP_LOCAL_PORT_RANGE)
 *                  udpboth    connected, shut down both ways
 *                  lite       UDP-Lite, checksum coverage set, a datagram queued
 *                             from litesender; lite6 connected, SHUT_WR
 *   corked         only a UDP socket with corked data (UDP_CORK, one write)
 *                  and one with MSG_MORE data: dump must refuse them
 *   ktls           a connection whose client has kernel TLS (TCP_ULP "tls",
 *                  TLS_TX with an AES-GCM-128 key): dump must refuse it.
 *                  Prints "KTLS yes", or "KTLS no REASON" where the kernel has
 *                  no TLS (the test then skips). After SIGTERM the bytes
 *                  still cross.
 *   tsid           a UDP socket with SO_TIMESTAMPING and its OPT_ID counter
 *                  (one datagram sent): dump must refuse it; it sends on after.
 *   ping [queued]  ICMP "ping" sockets (needs net.ipv4.ping_group_range to
 *                  hold the fixture's group): ping4 bound and connected to
 *                  127.0.0.1 (IP_TTL 50), ping6 to ::1, an unbound one;
 *                  after SIGTERM each keeps its identifier (the bound port)
 *                  and gets its echo answered. With `queued`, a reply waits
 *                  unread in ping4 before READY: dump must refuse it.
 *   packet [queued] raw: AF_PACKET SOCK_RAW ETH_P_ALL bound to lo, a classic
 *                  filter passing only UDP to port 5555 (locked),
 *                  PACKET_AUXDATA, PACKET_VERSION 2, promiscuous and
 *                  all-multicast memberships on lo, SO_RCVBUF locked;
 *                  dgram: SOCK_DGRAM ETH_P_IP, unbound, PACKET_ORIGDEV,
 *                  SO_TIMESTAMPNS, SO_RXQ_OVFL, SO_RCVTIMEO; vnet: SOCK_RAW
 *                  of no protocol with a 12-byte PACKET_VNET_HDR_SZ.
 *                  (The memberships show in `ip -d link show lo`: the test
 *                  looks there.)
 *                  After SIGTERM all compared, and raw sees a datagram
 *                  sent to 127.0.0.1:5555. With `queued`, one such frame
 *                  waits unread before READY: dump must refuse it.
 *   packet groups  spkt_lo: SOCK_PACKET ETH_P_IP bound to lo (by name);
 *                  spkt_any: SOCK_PACKET ETH_P_ALL, unbound; fan1, fan2:
 *                  SOCK_RAW ETH_P_IP bound to lo, PACKET_FANOUT group 77 of
 *                  type HASH with FLAG_DEFRAG; fan3: SOCK_DGRAM ETH_P_IP in a
 *                  group of type CPU whose id the kernel chose (FLAG_UNIQUEID).
 *                  After SIGTERM all compared (PACKET_FANOUT, names), and a
 *                  UDP datagram to 127.0.0.1:5555 reaches spkt_lo, spkt_any,
 *                  fan3, and exactly one of fan1 and fan2.
 *   packet ring    a PACKET_RX_RING mapped, its descriptor closed: dump
 *                  must refuse it (rings that come back: packetring.c).
 *   raw [queued]   raw4: SOCK_RAW protocol 253 bound to 127.0.0.1, IP_TOS;
 *                  icmp: raw ICMP with an ICMP_FILTER; icmp6: raw ICMPv6
 *                  with an ICMP6_FILTER; raw6: protocol 253
 *                  connected to ::1, IPV6_CHECKSUM 2; unbound: protocol 254;
 *                  hdr4: IPPROTO_RAW (IP_HDRINCL implied) bound to 127.0.0.1;
 *                  hdr6: IPv6 IPPROTO_RAW; mptcp: protocol 262, past 255.
 *                  hdr4 sends raw4 a packet with a header of its own after restore.
 *                  After SIGTERM all compared, and raw4 and raw6 each get a
 *                  packet of their protocol sent after restore. With
 *                  `queued`, one packet waits unread in raw4: refused.
 *   netlink        route: NETLINK_ROUTE bound by the kernel (first send),
 *                  groups RTMGRP_LINK, RTNLGRP_IPV6_ROUTE and 33 (above 32),
 *                  NETLINK_NO_ENOBUFS, NETLINK_EXT_ACK, SO_RCVBUF locked,
 *                  a locked classic filter, SO_RCVTIMEO;
 *                  fixed: NETLINK_GENERIC bound to port 4000000, connected to
 *                  the kernel; fresh: never bound, SO_PASSSEC, SO_SNDTIMEO. After SIGTERM each keeps
 *                  port, groups and options, and route answers a request.
 *
 * Every option is read back with getsockopt before READY (a snapshot); after
 * SIGTERM each is read again and must be equal (buffer sizes only where the
 * program locked them: the kernel sizes the others itself). The connection
 * must still carry bytes and the shutdowns must still act.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/netlink.h>
#include <linux/if_packet.h>
#include <linux/if_ether.h>
#include <linux/rtnetlink.h>
#include <linux/tls.h>
#include <linux/net_tstamp.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/ip_icmp.h>
#include <netinet/icmp6.h>
#include <netinet/tcp.h>
#include <netinet/udp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
#include "fixture.h"

#ifndef SO_BUF_LOCK
#define SO_BUF_LOCK 72
#endif
#ifndef ICMP_FILTER /* linux/icmp.h, which clashes with netinet/ip_icmp.h */
#define ICMP_FILTER 1
struct icmp_filter { unsigned int data; };
#endif
#ifndef IPV6_FREEBIND
#define IPV6_FREEBIND 78
#endif

static volatile sig_atomic_t term;
static void on_term(int sig) { (void)sig; term = 1; }
static void die(const char *what) { fprintf(stderr, "setup: %s: %s\n", what, strerror(errno)); exit(2); }

static void set_int(int fd, int level, int option, int value, const char *name) {
    if (setsockopt(fd, level, option, &value, sizeof(value)) != 0) die(name);
}

/* One option's bytes as getsockopt gave them. */
struct seen { int fd; const char *socket; const char *name; int level, option; socklen_t length; unsigned char bytes[512]; };
static struct seen snapshot[2000];
static int seen_count;

static void read_option(struct seen *s) {
    memset(s->bytes, 0, sizeof(s->bytes));
    s->length = sizeof(s->bytes);
    if (s->level == SOL_SOCKET && s->option == SO_GET_FILTER) {
        /* The length is counted in instructions. */
        socklen_t count = sizeof(s->bytes) / sizeof(struct sock_filter);
        if (getsockopt(s->fd, s->level, s->option, s->bytes, &count) != 0) { s->length = 0; return; }
        s->length = count * sizeof(struct sock_filter);
        return;
    }
    if (getsockopt(s->fd, s->level, s->option, s->bytes, &s->length) != 0) s->length = (socklen_t)-1;
}

static void remember(int fd, const char *socket, const char *name, int level, int option) {
    if (seen_count == (int)(sizeof(snapshot) / sizeof(snapshot[0]))) { errno = ENOBUFS; die("too many options to remember"); }
    struct seen *s = &snapshot[seen_count++];
    *s = (struct seen){ .fd = fd, .socket = socket, .name = name, .level = level, .option = option };
    read_option(s);
    if (s->length == (socklen_t)-1) die(name);
}

/* An option older kernels do not know (ENOPROTOOPT): left out there. */
static void remember_if_known(int fd, const char *socket, const char *name, int level, int option) {
    int value;
    socklen_t length = sizeof(value);
    if (getsockopt(fd, level, option, &value, &length) != 0 && errno == ENOPROTOOPT) return;
    remember(fd, socket, name, level, option);
}

#ifndef TCP_TX_DELAY
#define TCP_TX_DELAY 37
#endif
#ifndef TCP_FASTOPEN_NO_COOKIE
#define TCP_FASTOPEN_NO_COOKIE 34
#endif
#define TCP_RTO_MAX_MS_ 44
#define TCP_RTO_MIN_US_ 45
#define TCP_DELACK_MAX_US_ 46
#ifndef SO_PREFER_BUSY_POLL
#define SO_PREFER_BUSY_POLL 69
#endif

#define SO_RCVMARK_ 75
#define SO_RCVPRIORITY_ 82
#define SO_TXREHASH_ 74
#ifndef IP_RECVORIGDSTADDR
#define IP_RECVORIGDSTADDR 20
#endif
#ifndef IPV6_RECVORIGDSTADDR
#define IPV6_RECVORIGDSTADDR 74
#endif
#ifndef IPV6_MINHOPCOUNT
#define IPV6_MINHOPCOUNT 73
#endif
#ifndef IPV6_AUTOFLOWLABEL
#define IPV6_AUTOFLOWLABEL 70
#endif
#ifndef IPV6_ADDR_PREFERENCES
#define IPV6_ADDR_PREFERENCES 72
#endif
#ifndef IPV6_PREFER_SRC_TMP
#define IPV6_PREFER_SRC_TMP 0x0001
#endif
#ifndef IPV6_FLOWINFO
#define IPV6_FLOWINFO 11
#endif
#ifndef IP_CHECKSUM
#define IP_CHECKSUM 23
#endif
#ifndef IP_NODEFRAG
#define IP_NODEFRAG 22
#endif
#ifndef PACKET_VNET_HDR_SZ
#define PACKET_VNET_HDR_SZ 24
#endif

#define OPT(level, option) remember(fd, label, #option, level, option)

/* Every option a socket of this family keeps; `tcp`: 1 TCP, 0 UDP, 2 ICMP. */
static void remember_all(int fd, const char *label, int ipv6, int tcp, int buffers_locked) {
    OPT(SOL_SOCKET, SO_REUSEADDR); OPT(SOL_SOCKET, SO_REUSEPORT); OPT(SOL_SOCKET, SO_KEEPALIVE);
    OPT(SOL_SOCKET, SO_BROADCAST); OPT(SOL_SOCKET, SO_PRIORITY); OPT(SOL_SOCKET, SO_MARK);
    OPT(SOL_SOCKET, SO_BINDTODEVICE); OPT(SOL_SOCKET, SO_LINGER); OPT(SOL_SOCKET, SO_OOBINLINE);
    OPT(SOL_SOCKET, SO_RCVLOWAT); OPT(SOL_SOCKET, SO_RCVTIMEO); OPT(SOL_SOCKET, SO_SNDTIMEO);
    OPT(SOL_SOCKET, SO_BUF_LOCK); OPT(SOL_SOCKET, SO_GET_FILTER); OPT(SOL_SOCKET, SO_LOCK_FILTER);
    OPT(SOL_SOCKET, SO_TIMESTAMP); OPT(SOL_SOCKET, SO_TIMESTAMPNS); OPT(SOL_SOCKET, SO_RXQ_OVFL); OPT(SOL_SOCKET, SO_SELECT_ERR_QUEUE);
    OPT(SOL_SOCKET, SO_BUSY_POLL); OPT(SOL_SOCKET, SO_PREFER_BUSY_POLL); OPT(SOL_SOCKET, SO_ZEROCOPY);
    OPT(SOL_SOCKET, SO_MAX_PACING_RATE); OPT(SOL_SOCKET, SO_NOFCS); OPT(SOL_SOCKET, SO_TIMESTAMPING);
    remember_if_known(fd, label, "SO_RCVMARK", SOL_SOCKET, SO_RCVMARK_);
    remember_if_known(fd, label, "SO_RCVPRIORITY", SOL_SOCKET, SO_RCVPRIORITY_);
    if (buffers_locked & 1) OPT(SOL_SOCKET, SO_SNDBUF);
    if (buffers_locked & 2) OPT(SOL_SOCKET, SO_RCVBUF);
    if (ipv6) {
        OPT(IPPROTO_IPV6, IPV6_V6ONLY); OPT(IPPROTO_IPV6, IPV6_TCLASS); OPT(IPPROTO_IPV6, IPV6_UNICAST_HOPS);
        OPT(IPPROTO_IPV6, IPV6_FREEBIND); OPT(IPPROTO_IPV6, IPV6_TRANSPARENT); OPT(IPPROTO_IPV6, IPV6_MTU_DISCOVER);
        OPT(IPPROTO_IPV6, IPV6_RECVERR); OPT(IPPROTO_IPV6, IPV6_RECVPKTINFO); OPT(IPPROTO_IPV6, IPV6_RECVHOPLIMIT);
        OPT(IPPROTO_IPV6, IPV6_RECVTCLASS); OPT(IPPROTO_IPV6, IPV6_ADDR_PREFERENCES); OPT(IPPROTO_IPV6, IPV6_MINHOPCOUNT);
        OPT(IPPROTO_IPV6, IPV6_DONTFRAG); OPT(IPPROTO_IPV6, IPV6_AUTOFLOWLABEL); OPT(IPPROTO_IPV6, IPV6_FLOWINFO);
        OPT(IPPROTO_IPV6, IPV6_RECVORIGDSTADDR); OPT(IPPROTO_IPV6, IPV6_RECVPATHMTU); OPT(IPPROTO_IPV6, IPV6_RECVRTHDR);
        OPT(IPPROTO_IPV6, IPV6_RECVHOPOPTS); OPT(IPPROTO_IPV6, IPV6_RECVDSTOPTS);
        remember_if_known(fd, label, "IPV6_RECVFRAGSIZE", IPPROTO_IPV6, 77);
        remember_if_known(fd, label, "IPV6_RECVERR_RFC4884", IPPROTO_IPV6, 31);
        /* Multicast options mean nothing to TCP (an accepted socket's IP_MULTICAST_TTL is its SYN's TTL). */
        if (!tcp) {
            OPT(IPPROTO_IPV6, IPV6_MULTICAST_HOPS); OPT(IPPROTO_IPV6, IPV6_MULTICAST_LOOP); OPT(IPPROTO_IPV6, IPV6_MULTICAST_IF);
            OPT(IPPROTO_IPV6, IPV6_UNICAST_IF);
        }
    } else {
        OPT(IPPROTO_IP, IP_FREEBIND); OPT(IPPROTO_IP, IP_TRANSPARENT);
    }
    /* The IPv4 level, an IPv6 socket's too (its IPv4-mapped traffic uses it). */
    OPT(IPPROTO_IP, IP_TOS); OPT(IPPROTO_IP, IP_TTL);
    OPT(IPPROTO_IP, IP_PKTINFO); OPT(IPPROTO_IP, IP_MTU_DISCOVER); OPT(IPPROTO_IP, IP_RECVERR); OPT(IPPROTO_IP, IP_RECVTTL);
    OPT(IPPROTO_IP, IP_RECVTOS); OPT(IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT); OPT(IPPROTO_IP, IP_RECVOPTS); OPT(IPPROTO_IP, IP_RETOPTS);
    OPT(IPPROTO_IP, IP_PASSSEC); OPT(IPPROTO_IP, IP_RECVORIGDSTADDR); OPT(IPPROTO_IP, IP_MINTTL); OPT(IPPROTO_IP, IP_NODEFRAG);
    OPT(IPPROTO_IP, IP_CHECKSUM);
    remember_if_known(fd, label, "IP_LOCAL_PORT_RANGE", IPPROTO_IP, 51);
    remember_if_known(fd, label, "IP_RECVFRAGSIZE", IPPROTO_IP, 25);
    remember_if_known(fd, label, "IP_RECVERR_RFC4884", IPPROTO_IP, 26);
    if (tcp != 1) {
        OPT(IPPROTO_IP, IP_MULTICAST_TTL); OPT(IPPROTO_IP, IP_MULTICAST_LOOP); OPT(IPPROTO_IP, IP_MULTICAST_IF);
        OPT(IPPROTO_IP, IP_MULTICAST_ALL); OPT(IPPROTO_IP, IP_UNICAST_IF);
    }
    if (tcp == 1) {
        OPT(IPPROTO_TCP, TCP_NODELAY); OPT(IPPROTO_TCP, TCP_CORK); OPT(IPPROTO_TCP, TCP_KEEPIDLE);
        OPT(IPPROTO_TCP, TCP_KEEPINTVL); OPT(IPPROTO_TCP, TCP_KEEPCNT); OPT(IPPROTO_TCP, TCP_USER_TIMEOUT);
        OPT(IPPROTO_TCP, TCP_CONGESTION); OPT(IPPROTO_TCP, TCP_SYNCNT); OPT(IPPROTO_TCP, TCP_LINGER2);
        OPT(IPPROTO_TCP, TCP_THIN_LINEAR_TIMEOUTS); OPT(IPPROTO_TCP, TCP_NOTSENT_LOWAT); OPT(IPPROTO_TCP, TCP_INQ);
        OPT(IPPROTO_TCP, TCP_DEFER_ACCEPT); OPT(IPPROTO_TCP, TCP_WINDOW_CLAMP); OPT(IPPROTO_TCP, TCP_QUICKACK);
        OPT(IPPROTO_TCP, TCP_FASTOPEN); OPT(IPPROTO_TCP, TCP_FASTOPEN_NO_COOKIE); OPT(IPPROTO_TCP, TCP_SAVE_SYN);
        OPT(IPPROTO_TCP, TCP_TX_DELAY); OPT(IPPROTO_TCP, TCP_FASTOPEN_KEY);
        remember_if_known(fd, label, "SO_TXREHASH", SOL_SOCKET, SO_TXREHASH_);
        remember_if_known(fd, label, "TCP_RTO_MAX_MS", IPPROTO_TCP, TCP_RTO_MAX_MS_);
        remember_if_known(fd, label, "TCP_RTO_MIN_US", IPPROTO_TCP, TCP_RTO_MIN_US_);
        remember_if_known(fd, label, "TCP_DELACK_MAX_US", IPPROTO_TCP, TCP_DELACK_MAX_US_);
    } else if (tcp == 0) {
        OPT(IPPROTO_UDP, UDP_CORK);
    }
}

static void compare_all(void) {
    for (int i = 0; i < seen_count; i++) {
        struct seen now = snapshot[i];
        read_option(&now);
        if (now.length != snapshot[i].length || memcmp(now.bytes, snapshot[i].bytes, now.length == (socklen_t)-1 ? 0 : now.length) != 0) {
            int before = 0, after = 0;
            memcpy(&before, snapshot[i].bytes, sizeof(int));
            memcpy(&after, now.bytes, sizeof(int));
            fail("%s %s: %d (%u bytes), was %d (%u bytes)", snapshot[i].socket, snapshot[i].name, after, now.length, before, snapshot[i].length);
        }
    }
}

/* A classic BPF program: accept packets of at most `cap` bytes whole (a load, a jump, two returns). */
static void attach_filter(int fd, unsigned cap, int lock, const char *what) {
    struct sock_filter code[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_LEN, 0),
        BPF_JUMP(BPF_JMP | BPF_JGT | BPF_K, cap, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, 0xffff),
        BPF_STMT(BPF_RET | BPF_K, 0),
    };
    struct sock_fprog program = { .len = 4, .filter = code };
    if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &program, sizeof(program)) != 0) die(what);
    if (lock) set_int(fd, SOL_SOCKET, SO_LOCK_FILTER, 1, "SO_LOCK_FILTER");
}

/* Membership of `group` on lo as MCAST_MSFILTER reports it: mode and source count, or -1. */
static int membership(int fd, int level, const struct sockaddr_storage *group, int *sources) {
    char buffer[GROUP_FILTER_SIZE(4)];
    struct group_filter *f = (struct group_filter *)buffer;
    memset(buffer, 0, sizeof(buffer));
    f->gf_interface = if_nametoindex("lo");
    f->gf_group = *group;
    f->gf_numsrc = 4;
    socklen_t length = sizeof(buffer);
    if (getsockopt(fd, level, MCAST_MSFILTER, buffer, &length) != 0) return -1;
    *sources = (int)f->gf_numsrc;
    return (int)f->gf_fmode;
}

static struct sockaddr_storage inet4(const char *text, int port) {
    struct sockaddr_storage s = { 0 };
    struct sockaddr_in *a = (struct sockaddr_in *)&s;
    a->sin_family = AF_INET;
    a->sin_port = htons(port);
    inet_pton(AF_INET, text, &a->sin_addr);
    return s;
}

static struct sockaddr_storage inet6(const char *text, int port) {
    struct sockaddr_storage s = { 0 };
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)&s;
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(port);
    inet_pton(AF_INET6, text, &a->sin6_addr);
    return s;
}

static void join(int fd, int level, struct sockaddr_storage group, const char *what) {
    struct group_req r = { .gr_interface = if_nametoindex("lo"), .gr_group = group };
    if (setsockopt(fd, level, MCAST_JOIN_GROUP, &r, sizeof(r)) != 0) die(what);
}

static void join_source(int fd, struct sockaddr_storage group, struct sockaddr_storage source, const char *what) {
    struct group_source_req r = { .gsr_interface = if_nametoindex("lo"), .gsr_group = group, .gsr_source = source };
    if (setsockopt(fd, IPPROTO_IP, MCAST_JOIN_SOURCE_GROUP, &r, sizeof(r)) != 0) die(what);
}

/* A TCP MD5 key ("cryo-md5-key") for `address`/`prefix`. */
static int add_md5_key(int fd, const char *address, int prefix) {
    struct tcp_md5sig m;
    memset(&m, 0, sizeof(m));
    struct sockaddr_storage a = inet4(address, 0);
    memcpy(&m.tcpm_addr, &a, sizeof(struct sockaddr_in));
    m.tcpm_flags = TCP_MD5SIG_FLAG_PREFIX;
    m.tcpm_prefixlen = (unsigned char)prefix;
    m.tcpm_keylen = 12;
    memcpy(m.tcpm_key, "cryo-md5-key", 12);
    return setsockopt(fd, IPPROTO_TCP, TCP_MD5SIG_EXT, &m, sizeof(m));
}

/* Whether a non-blocking connect completes within `ms`. */
static int connects(int fd, const struct sockaddr_storage *to, socklen_t size, int ms) {
    fcntl(fd, F_SETFL, O_NONBLOCK);
    if (connect(fd, (const struct sockaddr *)to, size) == 0) return 1;
    if (errno != EINPROGRESS) return 0;
    struct pollfd p = { .fd = fd, .events = POLLOUT };
    int error = 0;
    socklen_t length = sizeof(error);
    return poll(&p, 1, ms) == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) == 0 && error == 0;
}

static void wait_for_term(void) {
    ready_then_wait(&term);
}

static int corked(void) {
    struct sockaddr_storage lo = inet4("127.0.0.1", 0);
    int target = socket(AF_INET, SOCK_DGRAM, 0);
    if (target < 0 || bind(target, (struct sockaddr *)&lo, sizeof(struct sockaddr_in)) != 0) die("target");
    struct sockaddr_storage name;
    socklen_t size = sizeof(name);
    getsockname(target, (struct sockaddr *)&name, &size);
    int cork = socket(AF_INET, SOCK_DGRAM, 0);
    if (cork < 0 || connect(cork, (struct sockaddr *)&name, size) != 0) die("cork");
    set_int(cork, IPPROTO_UDP, UDP_CORK, 1, "UDP_CORK");
    if (send(cork, "held back", 9, 0) != 9) die("corked send");
    int more = socket(AF_INET, SOCK_DGRAM, 0);
    if (more < 0 || connect(more, (struct sockaddr *)&name, size) != 0) die("more");
    if (send(more, "more to come", 12, MSG_MORE) != 12) die("MSG_MORE send");
    usleep(20000);
    char byte;
    if (recv(target, &byte, 1, MSG_DONTWAIT) >= 0) die("a corked datagram left early");
    wait_for_term();
    /* Uncorking sends the datagrams held back. */
    set_int(cork, IPPROTO_UDP, UDP_CORK, 0, "UDP_CORK off");
    if (send(more, "!", 1, 0) != 1) fail("MSG_MORE socket cannot send (%s)", strerror(errno));
    usleep(20000);
    char buffer[64];
    ssize_t n = recv(target, buffer, sizeof(buffer), MSG_DONTWAIT);
    if (n != 9 || memcmp(buffer, "held back", 9) != 0) fail("corked datagram: %zd bytes", n);
    n = recv(target, buffer, sizeof(buffer), MSG_DONTWAIT);
    if (n != 13 || memcmp(buffer, "more to come!", 13) != 0) fail("MSG_MORE datagram: %zd bytes", n);
    if (failbuf[0]) { printf("FAIL: %s\n", failbuf); fflush(stdout); return 1; }
    printf("PASS\n");
    fflush(stdout);
    return 0;
}

/* An echo request on a connected ping socket (the kernel puts in the identifier and checksum). */
static int echo(int fd, int ipv6, int sequence) {
    unsigned char packet[16] = { 0 };
    packet[0] = ipv6 ? ICMP6_ECHO_REQUEST : ICMP_ECHO;
    packet[7] = (unsigned char)sequence;
    memcpy(packet + 8, "cryo-ok!", 8);
    return send(fd, packet, sizeof(packet), 0) == (ssize_t)sizeof(packet) ? 0 : -1;
}

/* The echo reply to `sequence`, with our identifier, within 5 s. */
static void expect_reply(int fd, int ipv6, int sequence, int identifier, const char *what) {
    struct pollfd p = { .fd = fd, .events = POLLIN };
    if (poll(&p, 1, 5000) != 1) { fail("%s: no echo reply", what); return; }
    unsigned char packet[64];
    ssize_t n = recv(fd, packet, sizeof(packet), MSG_DONTWAIT);
    if (n < 16) { fail("%s: a reply of %zd bytes", what, n); return; }
    if (packet[0] != (ipv6 ? ICMP6_ECHO_REPLY : ICMP_ECHOREPLY) || packet[7] != sequence || memcmp(packet + 8, "cryo-ok!", 8) != 0)
        fail("%s: not our echo reply (type %d, sequence %d)", what, packet[0], packet[7]);
    int id = packet[4] << 8 | packet[5];
    if (id != identifier) fail("%s: reply to identifier %d, the socket's is %d", what, id, identifier);
}

static int port_of(int fd) {
    struct sockaddr_storage a;
    socklen_t size = sizeof(a);
    if (getsockname(fd, (struct sockaddr *)&a, &size) != 0) return -1;
    return ntohs(a.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&a)->sin6_port : ((struct sockaddr_in *)&a)->sin_port);
}

static int ping(int queued) {
    int ping4 = socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP);
    if (ping4 < 0) die("ping socket (is ping_group_range set?)");
    struct sockaddr_storage lo = inet4("127.0.0.1", 0), lo6 = inet6("::1", 0);
    set_int(ping4, IPPROTO_IP, IP_TTL, 50, "IP_TTL");
    if (bind(ping4, (struct sockaddr *)&lo, sizeof(struct sockaddr_in)) != 0
        || connect(ping4, (struct sockaddr *)&lo, sizeof(struct sockaddr_in)) != 0) die("ping4");
    int ping6 = socket(AF_INET6, SOCK_DGRAM, IPPROTO_ICMPV6);
    if (ping6 < 0 || bind(ping6, (struct sockaddr *)&lo6, sizeof(struct sockaddr_in6)) != 0
        || connect(ping6, (struct sockaddr *)&lo6, sizeof(struct sockaddr_in6)) != 0) die("ping6");
    int unbound = socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP);
    if (unbound < 0) die("unbound ping socket");
    int id4 = port_of(ping4), id6 = port_of(ping6);
    if (echo(ping4, 0, 1) != 0 || echo(ping6, 1, 1) != 0) die("echo");
    expect_reply(ping4, 0, 1, id4, "ping4 before");
    expect_reply(ping6, 1, 1, id6, "ping6 before");
    if (failbuf[0]) die(failbuf);
    if (queued) {
        if (echo(ping4, 0, 2) != 0) die("echo");
        usleep(50000);
    }
    remember_all(ping4, "ping4", 0, 2, 0);
    remember_all(ping6, "ping6", 1, 2, 0);
    wait_for_term();
    compare_all();
    if (port_of(ping4) != id4) fail("ping4: identifier %d, was %d", port_of(ping4), id4);
    if (port_of(ping6) != id6) fail("ping6: identifier %d, was %d", port_of(ping6), id6);
    if (port_of(unbound) != 0) fail("the unbound ping socket became bound");
    int type = 0, protocol = 0;
    socklen_t size = sizeof(int);
    getsockopt(unbound, SOL_SOCKET, SO_TYPE, &type, &size);
    getsockopt(unbound, SOL_SOCKET, SO_PROTOCOL, &protocol, &size);
    if (type != SOCK_DGRAM || protocol != IPPROTO_ICMP) fail("the unbound ping socket is of type %d, protocol %d", type, protocol);
    if (echo(ping4, 0, 3) != 0 || echo(ping6, 1, 3) != 0) fail("echo after restore: %s", strerror(errno));
    expect_reply(ping4, 0, 3, id4, "ping4 after");
    expect_reply(ping6, 1, 3, id6, "ping6 after");
    if (failbuf[0]) { printf("FAIL: %s\n", failbuf); fflush(stdout); return 1; }
    printf("PASS\n");
    fflush(stdout);
    return 0;
}

static unsigned nl_port(int fd) {
    struct sockaddr_nl a;
    socklen_t size = sizeof(a);
    memset(&a, 0, sizeof(a));
    getsockname(fd, (struct sockaddr *)&a, &size);
    return a.nl_pid;
}

/* RTM_GETLINK for lo (index 1): the answer must come back to our port, with our sequence number. */
static int ask_route(int fd, unsigned sequence, const char *what) {
    struct { struct nlmsghdr h; struct ifinfomsg i; } request = {
        .h = { .nlmsg_len = sizeof(request), .nlmsg_type = RTM_GETLINK, .nlmsg_flags = NLM_F_REQUEST, .nlmsg_seq = sequence },
        .i = { .ifi_family = AF_UNSPEC, .ifi_index = 1 },
    };
    struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
    if (sendto(fd, &request, sizeof(request), 0, (struct sockaddr *)&kernel, sizeof(kernel)) != sizeof(request)) {
        fail("%s: send: %s", what, strerror(errno));
        return -1;
    }
    char answer[8192];
    struct pollfd p = { .fd = fd, .events = POLLIN };
    if (poll(&p, 1, 5000) != 1) { fail("%s: no answer", what); return -1; }
    ssize_t n = recv(fd, answer, sizeof(answer), 0);
    struct nlmsghdr *h = (struct nlmsghdr *)answer;
    if (n < (ssize_t)sizeof(*h) || h->nlmsg_type != RTM_NEWLINK || h->nlmsg_seq != sequence || h->nlmsg_pid != nl_port(fd)) {
        fail("%s: answer of %zd bytes, type %d, sequence %u", what, n, n >= (ssize_t)sizeof(*h) ? h->nlmsg_type : -1, n >= (ssize_t)sizeof(*h) ? h->nlmsg_seq : 0);
        return -1;
    }
    return 0;
}

static int netlink(void) {
    int route = socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
    struct sockaddr_nl groups = { .nl_family = AF_NETLINK, .nl_groups = RTMGRP_LINK };
    if (route < 0 || bind(route, (struct sockaddr *)&groups, sizeof(groups)) != 0) die("route");
    set_int(route, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, RTNLGRP_IPV6_ROUTE, "NETLINK_ADD_MEMBERSHIP");
    set_int(route, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, 33 /* RTNLGRP_BRVLAN */, "NETLINK_ADD_MEMBERSHIP 33");
    set_int(route, SOL_NETLINK, NETLINK_NO_ENOBUFS, 1, "NETLINK_NO_ENOBUFS");
    set_int(route, SOL_NETLINK, NETLINK_EXT_ACK, 1, "NETLINK_EXT_ACK");
    set_int(route, SOL_SOCKET, SO_RCVBUF, 300000, "SO_RCVBUF");
    /* A filter that passes every message (libudev's monitors filter theirs), locked; a receive timeout. */
    struct sock_filter pass[] = { BPF_STMT(BPF_RET | BPF_K, 0xffffffff) };
    struct sock_fprog passing = { .len = 1, .filter = pass };
    if (setsockopt(route, SOL_SOCKET, SO_ATTACH_FILTER, &passing, sizeof(passing)) != 0) die("netlink SO_ATTACH_FILTER");
    set_int(route, SOL_SOCKET, SO_LOCK_FILTER, 1, "netlink SO_LOCK_FILTER");
    struct timeval route_timeout = { 3, 250000 };
    if (setsockopt(route, SOL_SOCKET, SO_RCVTIMEO, &route_timeout, sizeof(route_timeout)) != 0) die("netlink SO_RCVTIMEO");
    if (ask_route(route, 1, "route before") != 0) die(failbuf);
    int fixed = socket(AF_NETLINK, SOCK_DGRAM, NETLINK_GENERIC);
    struct sockaddr_nl port = { .nl_family = AF_NETLINK, .nl_pid = 4000000 }, kernel = { .nl_family = AF_NETLINK };
    if (fixed < 0 || bind(fixed, (struct sockaddr *)&port, sizeof(port)) != 0
        || connect(fixed, (struct sockaddr *)&kernel, sizeof(kernel)) != 0) die("fixed");
    set_int(fixed, SOL_NETLINK, NETLINK_CAP_ACK, 1, "NETLINK_CAP_ACK");
    int fresh = socket(AF_NETLINK, SOCK_RAW, NETLINK_SOCK_DIAG);
    if (fresh < 0) die("fresh");
    set_int(fresh, SOL_SOCKET, SO_PASSSEC, 1, "SO_PASSSEC");
    struct timeval fresh_timeout = { 7, 0 };
    if (setsockopt(fresh, SOL_SOCKET, SO_SNDTIMEO, &fresh_timeout, sizeof(fresh_timeout)) != 0) die("netlink SO_SNDTIMEO");
    unsigned route_port = nl_port(route);
    const char *names[] = { "route", "fixed", "fresh" };
    int fds[] = { route, fixed, fresh };
    for (int i = 0; i < 3; i++) {
        int fd = fds[i];
        const char *label = names[i];
        OPT(SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS); OPT(SOL_NETLINK, NETLINK_PKTINFO); OPT(SOL_NETLINK, NETLINK_BROADCAST_ERROR);
        OPT(SOL_NETLINK, NETLINK_NO_ENOBUFS); OPT(SOL_NETLINK, NETLINK_CAP_ACK); OPT(SOL_NETLINK, NETLINK_EXT_ACK);
        OPT(SOL_NETLINK, NETLINK_GET_STRICT_CHK); OPT(SOL_SOCKET, SO_BUF_LOCK); OPT(SOL_SOCKET, SO_PROTOCOL); OPT(SOL_SOCKET, SO_TYPE);
        OPT(SOL_SOCKET, SO_GET_FILTER); OPT(SOL_SOCKET, SO_LOCK_FILTER); OPT(SOL_SOCKET, SO_RCVTIMEO); OPT(SOL_SOCKET, SO_SNDTIMEO);
        OPT(SOL_SOCKET, SO_PASSSEC);
        if (i == 0) OPT(SOL_SOCKET, SO_RCVBUF);
    }
    wait_for_term();
    compare_all();
    if (nl_port(route) != route_port) fail("route: port %u, was %u", nl_port(route), route_port);
    if (nl_port(fixed) != 4000000) fail("fixed: port %u, was 4000000", nl_port(fixed));
    if (nl_port(fresh) != 0) fail("fresh: bound to port %u", nl_port(fresh));
    struct sockaddr_nl peer;
    socklen_t size = sizeof(peer);
    memset(&peer, 0xff, sizeof(peer));
    if (getpeername(fixed, (struct sockaddr *)&peer, &size) != 0 || peer.nl_pid != 0 || peer.nl_groups != 0) fail("fixed: peer changed");
    ask_route(route, 2, "route after");
    if (failbuf[0]) { printf("FAIL: %s\n", failbuf); fflush(stdout); return 1; }
    printf("PASS\n");
    fflush(stdout);
    return 0;
}

static void send_udp_5555(const char *text) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_storage to = inet4("127.0.0.1", 5555);
    sendto(fd, text, strlen(text), 0, (struct sockaddr *)&to, sizeof(struct sockaddr_in));
    close(fd);
}

static int packet_ring(void) {
    int fd = socket(AF_PACKET, SOCK_RAW, 0);
    if (fd < 0) die("AF_PACKET ring");
    set_int(fd, SOL_PACKET, PACKET_VERSION, TPACKET_V2, "PACKET_VERSION ring");
    struct tpacket_req request = { .tp_block_size = 4096, .tp_block_nr = 4, .tp_frame_size = 2048, .tp_frame_nr = 8 };
    if (setsockopt(fd, SOL_PACKET, PACKET_RX_RING, &request, sizeof(request)) != 0) die("ring");
    if (mmap(NULL, 4 * 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) == MAP_FAILED) die("mmap ring");
    close(fd);
    wait_for_term();
    printf("PASS\n");
    fflush(stdout);
    return 0;
}

/* Whether a frame waits in fd within `ms` (read and dropped when so). */
static int frame_arrives(int fd, int ms) {
    struct pollfd p = { .fd = fd, .events = POLLIN };
    char frame[2048];
    if (poll(&p, 1, ms) != 1) return 0;
    while (recv(fd, frame, sizeof(frame), MSG_DONTWAIT) > 0) {}
    return 1;
}

static int packet_groups(void) {
    struct sockaddr by_name = { .sa_family = AF_PACKET };
    strcpy(by_name.sa_data, "lo");
    int spkt_lo = socket(AF_PACKET, SOCK_PACKET, htons(ETH_P_IP));
    if (spkt_lo < 0 || bind(spkt_lo, &by_name, sizeof(by_name)) != 0) die("SOCK_PACKET lo");
    int spkt_any = socket(AF_PACKET, SOCK_PACKET, htons(ETH_P_ALL));
    if (spkt_any < 0) die("SOCK_PACKET any");
    struct sockaddr_ll lo = { .sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_IP), .sll_ifindex = (int)if_nametoindex("lo") };
    int fan[3];
    for (int i = 0; i < 2; i++) {
        fan[i] = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_IP));
        if (fan[i] < 0 || bind(fan[i], (struct sockaddr *)&lo, sizeof(lo)) != 0) die("fanout member");
        set_int(fan[i], SOL_PACKET, PACKET_FANOUT, 77 | (PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_DEFRAG) << 16, "PACKET_FANOUT 77");
    }
    fan[2] = socket(AF_PACKET, SOCK_DGRAM, htons(ETH_P_IP));
    if (fan[2] < 0) die("fan3");
    set_int(fan[2], SOL_PACKET, PACKET_FANOUT, (PACKET_FANOUT_CPU | PACKET_FANOUT_FLAG_UNIQUEID) << 16, "PACKET_FANOUT unique");
    const char *names[] = { "spkt_lo", "spkt_any", "fan1", "fan2", "fan3" };
    int fds[] = { spkt_lo, spkt_any, fan[0], fan[1], fan[2] };
    for (int i = 0; i < 5; i++) {
        int fd = fds[i];
        const char *label = names[i];
        OPT(SOL_SOCKET, SO_TYPE); OPT(SOL_SOCKET, SO_PROTOCOL); OPT(SOL_SOCKET, SO_RCVBUF); OPT(SOL_SOCKET, SO_GET_FILTER);
        if (i >= 2) OPT(SOL_PACKET, PACKET_FANOUT);
    }
    wait_for_term();
    compare_all();
    struct sockaddr name;
    socklen_t size = sizeof(name);
    if (getsockname(spkt_lo, &name, &size) != 0 || name.sa_family != AF_PACKET || strcmp(name.sa_data, "lo") != 0) fail("spkt_lo: not bound to lo");
    size = sizeof(name);
    if (getsockname(spkt_any, &name, &size) != 0 || name.sa_data[0] != 0) fail("spkt_any: bound to %.14s", name.sa_data);
    /* A receiver, so that no ICMP port-unreachable follows as a second frame. */
    int sink = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_storage port = inet4("127.0.0.1", 5555);
    if (sink < 0 || bind(sink, (struct sockaddr *)&port, sizeof(struct sockaddr_in)) != 0) fail("sink: %s", strerror(errno));
    send_udp_5555("after restore");
    if (!frame_arrives(spkt_lo, 5000)) fail("spkt_lo: no frame");
    if (!frame_arrives(spkt_any, 5000)) fail("spkt_any: no frame");
    if (!frame_arrives(fan[2], 5000)) fail("fan3: no frame");
    int got = frame_arrives(fan[0], 1000) + frame_arrives(fan[1], 1000);
    if (got != 1) fail("group 77: %d of its two members got the frame", got);
    if (failbuf[0]) { printf("FAIL: %s\n", failbuf); fflush(stdout); return 1; }
    printf("PASS\n");
    fflush(stdout);
    return 0;
}

static int packet(int queued) {
    int raw = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
    if (raw < 0) die("AF_PACKET");
    /* ethertype IPv4, protocol UDP, destination port 5555 (no IP options on lo): whole frame, else nothing. */
    struct sock_filter code[] = {
        BPF_STMT(BPF_LD | BPF_H | BPF_ABS, 12), BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ETH_P_IP, 0, 5),
        BPF_STMT(BPF_LD | BPF_B | BPF_ABS, 23), BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, IPPROTO_UDP, 0, 3),
        BPF_STMT(BPF_LD | BPF_H | BPF_ABS, 36), BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 5555, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, 0xffff), BPF_STMT(BPF_RET | BPF_K, 0),
    };
    struct sock_fprog program = { .len = 8, .filter = code };
    if (setsockopt(raw, SOL_SOCKET, SO_ATTACH_FILTER, &program, sizeof(program)) != 0) die("SO_ATTACH_FILTER");
    set_int(raw, SOL_SOCKET, SO_LOCK_FILTER, 1, "SO_LOCK_FILTER");
    set_int(raw, SOL_PACKET, PACKET_AUXDATA, 1, "PACKET_AUXDATA");
    set_int(raw, SOL_PACKET, PACKET_VERSION, TPACKET_V2, "PACKET_VERSION");
    set_int(raw, SOL_SOCKET, SO_RCVBUF, 123456, "SO_RCVBUF");
    struct sockaddr_ll lo = { .sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL), .sll_ifindex = (int)if_nametoindex("lo") };
    if (bind(raw, (struct sockaddr *)&lo, sizeof(lo)) != 0) die("bind AF_PACKET");
    struct packet_mreq promisc = { .mr_ifindex = lo.sll_ifindex, .mr_type = PACKET_MR_PROMISC };
    struct packet_mreq allmulti = { .mr_ifindex = lo.sll_ifindex, .mr_type = PACKET_MR_ALLMULTI };
    if (setsockopt(raw, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &promisc, sizeof(promisc)) != 0
        || setsockopt(raw, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &allmulti, sizeof(allmulti)) != 0) die("PACKET_ADD_MEMBERSHIP");
    int dgram = socket(AF_PACKET, SOCK_DGRAM, htons(ETH_P_IP));
    if (dgram < 0) die("AF_PACKET dgram");
    set_int(dgram, SOL_PACKET, PACKET_ORIGDEV, 1, "PACKET_ORIGDEV");
    /* dgram sees every IPv4 packet: it must stay empty until the dump, so it gets a filter dropping all. */
    struct sock_filter none[] = { BPF_STMT(BPF_RET | BPF_K, 0) };
    struct sock_fprog drop = { .len = 1, .filter = none };
    if (setsockopt(dgram, SOL_SOCKET, SO_ATTACH_FILTER, &drop, sizeof(drop)) != 0) die("dgram filter");
    set_int(dgram, SOL_SOCKET, SO_TIMESTAMPNS, 1, "SO_TIMESTAMPNS dgram");
    set_int(dgram, SOL_SOCKET, SO_RXQ_OVFL, 1, "SO_RXQ_OVFL dgram");
    set_int(dgram, SOL_SOCKET, SO_TIMESTAMPING, SOF_TIMESTAMPING_RX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE | SOF_TIMESTAMPING_OPT_CMSG,
            "SO_TIMESTAMPING dgram");
    struct timeval packet_timeout = { 2, 500000 };
    if (setsockopt(dgram, SOL_SOCKET, SO_RCVTIMEO, &packet_timeout, sizeof(packet_timeout)) != 0) die("packet SO_RCVTIMEO");
    set_int(raw, SOL_SOCKET, SO_NOFCS, 1, "SO_NOFCS raw");
    set_int(raw, SOL_SOCKET, SO_INCOMING_CPU, 1, "SO_INCOMING_CPU raw");
    /* vnet: SOCK_RAW of no protocol (receives nothing), a 12-byte virtio header (PACKET_VNET_HDR reads 1 for it). */
    int vnet = socket(AF_PACKET, SOCK_RAW, 0);
    if (vnet < 0) die("AF_PACKET vnet");
    int vnet_size = 0;
    socklen_t vnet_length = sizeof(vnet_size);
    int vnet_known = getsockopt(vnet, SOL_PACKET, PACKET_VNET_HDR_SZ, &vnet_size, &vnet_length) == 0;
    if (vnet_known) set_int(vnet, SOL_PACKET, PACKET_VNET_HDR_SZ, 12, "PACKET_VNET_HDR_SZ");
    else set_int(vnet, SOL_PACKET, PACKET_VNET_HDR, 1, "PACKET_VNET_HDR");
    if (queued) { send_udp_5555("queued"); usleep(50000); }
    const char *names[] = { "raw", "dgram", "vnet" };
    int fds[] = { raw, dgram, vnet };
    for (int i = 0; i < 3; i++) {
        int fd = fds[i];
        const char *label = names[i];
        OPT(SOL_PACKET, PACKET_VERSION); OPT(SOL_PACKET, PACKET_AUXDATA); OPT(SOL_PACKET, PACKET_ORIGDEV); OPT(SOL_PACKET, PACKET_RESERVE);
        OPT(SOL_PACKET, PACKET_VNET_HDR); OPT(SOL_PACKET, PACKET_LOSS); OPT(SOL_PACKET, PACKET_TIMESTAMP); OPT(SOL_PACKET, PACKET_QDISC_BYPASS);
        OPT(SOL_SOCKET, SO_GET_FILTER); OPT(SOL_SOCKET, SO_LOCK_FILTER); OPT(SOL_SOCKET, SO_BUF_LOCK); OPT(SOL_SOCKET, SO_TYPE);
        OPT(SOL_SOCKET, SO_PROTOCOL); OPT(SOL_SOCKET, SO_TIMESTAMPNS); OPT(SOL_SOCKET, SO_RXQ_OVFL); OPT(SOL_SOCKET, SO_RCVTIMEO);
        OPT(SOL_SOCKET, SO_NOFCS); OPT(SOL_SOCKET, SO_INCOMING_CPU); OPT(SOL_SOCKET, SO_TIMESTAMPING);
        if (vnet_known) OPT(SOL_PACKET, PACKET_VNET_HDR_SZ);
        if (i == 0) OPT(SOL_SOCKET, SO_RCVBUF);
    }
    wait_for_term();
    compare_all();
    struct sockaddr_ll name;
    socklen_t size = sizeof(name);
    if (getsockname(raw, (struct sockaddr *)&name, &size) != 0 || name.sll_ifindex != lo.sll_ifindex || name.sll_protocol != htons(ETH_P_ALL))
        fail("raw: no longer bound to lo for ETH_P_ALL");
    send_udp_5555("after restore");
    struct pollfd p = { .fd = raw, .events = POLLIN };
    char frame[256];
    if (poll(&p, 1, 5000) != 1) fail("raw: no frame for port 5555");
    else {
        ssize_t n = recv(raw, frame, sizeof(frame), 0);
        if (n != 14 + 20 + 8 + 13 || memcmp(frame + 42, "after restore", 13) != 0) fail("raw: a frame of %zd bytes", n);
    }
    if (failbuf[0]) { printf("FAIL: %s\n", failbuf); fflush(stdout); return 1; }
    printf("PASS\n");
    fflush(stdout);
    return 0;
}

static void send_raw(int ipv6, const char *text) {
    int fd = socket(ipv6 ? AF_INET6 : AF_INET, SOCK_RAW, 253);
    struct sockaddr_storage to = ipv6 ? inet6("::1", 0) : inet4("127.0.0.1", 0);
    /* IPV6_CHECKSUM 2 on the receiver: the sender fills in a checksum at offset 2 too. */
    if (ipv6) set_int(fd, IPPROTO_IPV6, IPV6_CHECKSUM, 2, "IPV6_CHECKSUM sender");
    if (sendto(fd, text, strlen(text), 0, (struct sockaddr *)&to, ipv6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in)) < 0)
        fail("send raw%s: %s", ipv6 ? "6" : "4", strerror(errno));
    close(fd);
}

static void expect_raw(int fd, int ipv6, const char *text, const char *what) {
    struct pollfd p = { .fd = fd, .events = POLLIN };
    char packet[256];
    if (poll(&p, 1, 5000) != 1) { fail("%s: nothing arrived", what); return; }
    ssize_t n = recv(fd, packet, sizeof(packet), MSG_DONTWAIT);
    size_t header = ipv6 ? 0 : 20; /* IPv4 raw sockets see the IP header */
    if (n != (ssize_t)(header + strlen(text)) || memcmp(packet + header, text + 0, 2) != 0 || memcmp(packet + header + 4, text + 4, strlen(text) - 4) != 0)
        fail("%s: a packet of %zd bytes", what, n);
}

static int raw(int queued) {
    int raw4 = socket(AF_INET, SOCK_RAW, 253);
    struct sockaddr_storage lo = inet4("127.0.0.1", 0), lo6 = inet6("::1", 0);
    if (raw4 < 0 || bind(raw4, (struct sockaddr *)&lo, sizeof(struct sockaddr_in)) != 0) die("raw4");
    set_int(raw4, IPPROTO_IP, IP_TOS, 0x48, "IP_TOS");
    set_int(raw4, IPPROTO_IP, IP_NODEFRAG, 1, "IP_NODEFRAG");
    /* icmp6: raw ICMPv6 that lets only echo replies through. */
    int icmp6 = socket(AF_INET6, SOCK_RAW, IPPROTO_ICMPV6);
    struct icmp6_filter filter6;
    ICMP6_FILTER_SETBLOCKALL(&filter6);
    ICMP6_FILTER_SETPASS(ICMP6_ECHO_REPLY, &filter6);
    if (icmp6 < 0 || setsockopt(icmp6, IPPROTO_ICMPV6, ICMP6_FILTER, &filter6, sizeof(filter6)) != 0) die("icmp6");
    int icmp = socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);
    struct icmp_filter filter = { .data = ~(1u << ICMP_ECHOREPLY) };
    if (icmp < 0 || setsockopt(icmp, SOL_RAW, ICMP_FILTER, &filter, sizeof(filter)) != 0) die("icmp");
    int raw6 = socket(AF_INET6, SOCK_RAW, 253);
    if (raw6 < 0 || connect(raw6, (struct sockaddr *)&lo6, sizeof(struct sockaddr_in6)) != 0) die("raw6");
    set_int(raw6, IPPROTO_IPV6, IPV6_CHECKSUM, 2, "IPV6_CHECKSUM");
    int unbound = socket(AF_INET, SOCK_RAW, 254);
    if (unbound < 0) die("unbound");
    int hdr4 = socket(AF_INET, SOCK_RAW, IPPROTO_RAW);
    if (hdr4 < 0 || bind(hdr4, (struct sockaddr *)&lo, sizeof(struct sockaddr_in)) != 0) die("hdr4");
    int hdr6 = socket(AF_INET6, SOCK_RAW, IPPROTO_RAW);
    if (hdr6 < 0) die("hdr6");
    int mptcp = socket(AF_INET, SOCK_RAW, 262);
    if (mptcp < 0) die("raw 262");
    if (queued) { send_raw(0, "queued.."); usleep(50000); }
    const char *names[] = { "raw4", "icmp", "raw6", "unbound", "icmp6", "hdr4", "hdr6", "mptcp" };
    int fds[] = { raw4, icmp, raw6, unbound, icmp6, hdr4, hdr6, mptcp };
    for (int i = 0; i < 8; i++) {
        int fd = fds[i];
        const char *label = names[i];
        OPT(SOL_SOCKET, SO_TYPE); OPT(SOL_SOCKET, SO_PROTOCOL); OPT(SOL_SOCKET, SO_DOMAIN); OPT(SOL_SOCKET, SO_BUF_LOCK);
        if (i == 2 || i == 6) { OPT(IPPROTO_IPV6, IPV6_CHECKSUM); OPT(IPPROTO_IPV6, IPV6_TCLASS); OPT(IPPROTO_IPV6, 36 /* IPV6_HDRINCL */); }
        else if (i == 4) { OPT(IPPROTO_ICMPV6, ICMP6_FILTER); OPT(IPPROTO_IPV6, IPV6_TCLASS); }
        else { OPT(IPPROTO_IP, IP_TOS); OPT(IPPROTO_IP, IP_HDRINCL); OPT(IPPROTO_IP, IP_NODEFRAG); }
        if (i == 1) OPT(SOL_RAW, ICMP_FILTER);
    }
    struct sockaddr_storage name4, name6;
    socklen_t size4 = sizeof(name4), size6 = sizeof(name6);
    getsockname(raw4, (struct sockaddr *)&name4, &size4);
    getsockname(raw6, (struct sockaddr *)&name6, &size6);
    wait_for_term();
    compare_all();
    struct sockaddr_storage now;
    socklen_t size = sizeof(now);
    if (getsockname(raw4, (struct sockaddr *)&now, &size) != 0 || size != size4 || memcmp(&now, &name4, size) != 0) fail("raw4: its address changed");
    size = sizeof(now);
    if (getsockname(raw6, (struct sockaddr *)&now, &size) != 0 || size != size6 || memcmp(&now, &name6, size) != 0) fail("raw6: its address changed");
    send_raw(0, "v4 after");
    send_raw(1, "v6 after");
    expect_raw(raw4, 0, "v4 after", "raw4");
    expect_raw(raw6, 1, "v6 after", "raw6");
    /* The header is hdr4's own (IP_HDRINCL): protocol 253 from and to 127.0.0.1; the kernel fills in
       the checksum and the total length. */
    unsigned char packet[20 + 10] = { 0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 253, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1 };
    memcpy(packet + 20, "hdr4 after", 10);
    packet[3] = sizeof(packet);
    struct sockaddr_storage to = inet4("127.0.0.1", 0);
    if (sendto(hdr4, packet, sizeof(packet), 0, (struct sockaddr *)&to, sizeof(struct sockaddr_in)) != (ssize_t)sizeof(packet))
        fail("hdr4: send: %s", strerror(errno));
    else expect_raw(raw4, 0, "hdr4 after", "raw4 (from hdr4)");
    if (failbuf[0]) { printf("FAIL: %s\n", failbuf); fflush(stdout); return 1; }
    printf("PASS\n");
    fflush(stdout);
    return 0;
}

static int tsid(void) {
    struct sockaddr_storage lo = inet4("127.0.0.1", 0);
    socklen_t size = sizeof(lo);
    int sink = socket(AF_INET, SOCK_DGRAM, 0), fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (sink < 0 || bind(sink, (struct sockaddr *)&lo, sizeof(struct sockaddr_in)) != 0 || getsockname(sink, (struct sockaddr *)&lo, &size) != 0
        || fd < 0 || connect(fd, (struct sockaddr *)&lo, size) != 0) die("tsid");
    set_int(fd, SOL_SOCKET, SO_TIMESTAMPING, SOF_TIMESTAMPING_TX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE | SOF_TIMESTAMPING_OPT_ID, "OPT_ID");
    if (send(fd, "one", 3, 0) != 3) die("tsid send");
    wait_for_term();
    char got[8];
    if (send(fd, "two", 3, 0) != 3) fail("tsid: send after: %s", strerror(errno));
    else if (recv(sink, got, sizeof(got), 0) != 3 || recv(sink, got, sizeof(got), 0) != 3 || memcmp(got, "two", 3) != 0)
        fail("tsid: the sink did not get both datagrams");
    if (failbuf[0]) { printf("FAIL: %s\n", failbuf); fflush(stdout); return 1; }
    printf("PASS\n");
    fflush(stdout);
    return 0;
}

static int ktls(void) {
    struct sockaddr_storage address = inet4("127.0.0.1", 0);
    socklen_t size = sizeof(address);
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    if (listener < 0 || bind(listener, (struct sockaddr *)&address, sizeof(struct sockaddr_in)) != 0 || listen(listener, 1) != 0
        || getsockname(listener, (struct sockaddr *)&address, &size) != 0) die("ktls listener");
    int client = socket(AF_INET, SOCK_STREAM, 0);
    if (client < 0 || connect(client, (struct sockaddr *)&address, size) != 0) die("ktls connect");
    int server = accept(listener, NULL, NULL);
    if (server < 0) die("ktls accept");
    if (setsockopt(client, IPPROTO_TCP, TCP_ULP, "tls", 3) != 0) {
        printf("KTLS no TCP_ULP tls: %s\n", strerror(errno));
    } else {
        struct tls12_crypto_info_aes_gcm_128 info = { .info = { .version = TLS_1_2_VERSION, .cipher_type = TLS_CIPHER_AES_GCM_128 } };
        memset(info.key, 0x17, sizeof(info.key));
        if (setsockopt(client, SOL_TLS, TLS_TX, &info, sizeof(info)) != 0) die("TLS_TX");
        printf("KTLS yes\n");
    }
    fflush(stdout);
    wait_for_term();
    char byte = 0;
    if (send(server, "k", 1, 0) != 1 || recv(client, &byte, 1, 0) != 1 || byte != 'k') fail("a byte did not cross (%s)", strerror(errno));
    if (failbuf[0]) { printf("FAIL: %s\n", failbuf); fflush(stdout); return 1; }
    printf("PASS\n");
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv) {
    signal(SIGTERM, on_term);
    signal(SIGPIPE, SIG_IGN);
    if (argc > 1 && strcmp(argv[1], "corked") == 0) return corked();
    if (argc > 1 && strcmp(argv[1], "ktls") == 0) return ktls();
    if (argc > 1 && strcmp(argv[1], "tsid") == 0) return tsid();
    if (argc > 1 && strcmp(argv[1], "netlink") == 0) return netlink();
    if (argc > 1 && strcmp(argv[1], "raw") == 0) return raw(argc > 2 && strcmp(argv[2], "queued") == 0);
    if (argc > 2 && strcmp(argv[1], "packet") == 0 && strcmp(argv[2], "ring") == 0)
        return packet_ring();
    if (argc > 2 && strcmp(argv[1], "packet") == 0 && strcmp(argv[2], "groups") == 0)
        return packet_groups();
    if (argc > 1 && strcmp(argv[1], "packet") == 0) return packet(argc > 2 && strcmp(argv[2], "queued") == 0);
    if (argc > 1 && strcmp(argv[1], "ping") == 0) return ping(argc > 2 && strcmp(argv[2], "queued") == 0);

    /* listener: everything at once. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct linger linger = { 1, 3 };
    struct timeval receive_timeout = { 1, 500000 }, send_timeout = { 2, 250000 };
    if (fd < 0) die("socket");
    set_int(fd, SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR");
    set_int(fd, SOL_SOCKET, SO_KEEPALIVE, 1, "SO_KEEPALIVE");
    set_int(fd, IPPROTO_IP, IP_TOS, 0x28, "IP_TOS");
    set_int(fd, SOL_SOCKET, SO_PRIORITY, 5, "SO_PRIORITY");
    set_int(fd, SOL_SOCKET, SO_MARK, 77, "SO_MARK");
    if (setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, "lo", 3) != 0) die("SO_BINDTODEVICE");
    set_int(fd, SOL_SOCKET, SO_RCVBUF, 70000, "SO_RCVBUF");
    if (setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, sizeof(linger)) != 0) die("SO_LINGER");
    set_int(fd, SOL_SOCKET, SO_OOBINLINE, 1, "SO_OOBINLINE");
    set_int(fd, SOL_SOCKET, SO_RCVLOWAT, 10, "SO_RCVLOWAT");
    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &receive_timeout, sizeof(receive_timeout)) != 0) die("SO_RCVTIMEO");
    if (setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &send_timeout, sizeof(send_timeout)) != 0) die("SO_SNDTIMEO");
    set_int(fd, IPPROTO_IP, IP_TTL, 33, "IP_TTL");
    set_int(fd, IPPROTO_IP, IP_FREEBIND, 1, "IP_FREEBIND");
    set_int(fd, IPPROTO_TCP, TCP_NODELAY, 1, "TCP_NODELAY");
    set_int(fd, IPPROTO_TCP, TCP_KEEPIDLE, 100, "TCP_KEEPIDLE");
    set_int(fd, IPPROTO_TCP, TCP_KEEPINTVL, 20, "TCP_KEEPINTVL");
    set_int(fd, IPPROTO_TCP, TCP_KEEPCNT, 4, "TCP_KEEPCNT");
    set_int(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, 5000, "TCP_USER_TIMEOUT");
    if (setsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, "reno", 4) != 0) die("TCP_CONGESTION");
    set_int(fd, SOL_SOCKET, SO_TIMESTAMP, 1, "SO_TIMESTAMP");
    set_int(fd, IPPROTO_TCP, TCP_SYNCNT, 3, "TCP_SYNCNT");
    set_int(fd, IPPROTO_TCP, TCP_LINGER2, 17, "TCP_LINGER2");
    set_int(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, 65536, "TCP_NOTSENT_LOWAT");
    set_int(fd, IPPROTO_TCP, TCP_THIN_LINEAR_TIMEOUTS, 1, "TCP_THIN_LINEAR_TIMEOUTS");
    set_int(fd, IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT, "IP_MTU_DISCOVER");
    /* Above 2^32: the option is an unsigned long. */
    unsigned long pacing = 5000000000UL;
    if (setsockopt(fd, SOL_SOCKET, SO_MAX_PACING_RATE, &pacing, sizeof(pacing)) != 0) die("SO_MAX_PACING_RATE");
    set_int(fd, SOL_SOCKET, SO_TXREHASH_, 0, "SO_TXREHASH");
    set_int(fd, SOL_SOCKET, SO_RCVMARK_, 1, "SO_RCVMARK");
    set_int(fd, IPPROTO_IP, IP_MINTTL, 3, "IP_MINTTL");
    set_int(fd, IPPROTO_IP, IP_RECVORIGDSTADDR, 1, "IP_RECVORIGDSTADDR");
    attach_filter(fd, 60000, 1, "listener filter");
    struct sockaddr_storage address = inet4("127.0.0.1", 0);
    if (bind(fd, (struct sockaddr *)&address, sizeof(struct sockaddr_in)) != 0 || listen(fd, 4) != 0) die("listener");
    socklen_t size = sizeof(address);
    getsockname(fd, (struct sockaddr *)&address, &size);
    int listener = fd;
    remember_all(fd, "listener", 0, 1, 2);

    /* client and server: a connection, each end with options of its own. */
    int client = socket(AF_INET, SOCK_STREAM, 0);
    if (client < 0 || connect(client, (struct sockaddr *)&address, size) != 0) die("connect");
    int server = accept(listener, NULL, NULL);
    if (server < 0) die("accept");
    set_int(client, IPPROTO_TCP, TCP_CORK, 1, "TCP_CORK");
    set_int(client, SOL_SOCKET, SO_SNDBUF, 90000, "SO_SNDBUF");
    set_int(client, IPPROTO_IP, IP_TOS, 0x10, "IP_TOS client");
    set_int(client, SOL_SOCKET, SO_PRIORITY, 2, "SO_PRIORITY client");
    set_int(client, IPPROTO_TCP, TCP_USER_TIMEOUT, 7000, "TCP_USER_TIMEOUT client");
    set_int(client, IPPROTO_TCP, TCP_INQ, 1, "TCP_INQ client");
    set_int(client, IPPROTO_IP, IP_RECVERR, 1, "IP_RECVERR client");
    set_int(client, IPPROTO_TCP, TCP_WINDOW_CLAMP, 30000, "TCP_WINDOW_CLAMP client");
    set_int(client, SOL_SOCKET, SO_ZEROCOPY, 1, "SO_ZEROCOPY client");
    set_int(server, SOL_SOCKET, SO_KEEPALIVE, 0, "SO_KEEPALIVE server");
    set_int(server, IPPROTO_TCP, TCP_KEEPCNT, 6, "TCP_KEEPCNT server");
    set_int(server, SOL_SOCKET, SO_RCVLOWAT, 1, "SO_RCVLOWAT server");
    attach_filter(client, 50000, 0, "client filter");
    remember_all(client, "client", 0, 1, 1);
    remember_all(server, "server", 0, 1, 2);

    /* client6m: IPv6, IPV6_V6ONLY off, connected to the listener's IPv4-mapped address;
     * client6: IPv6, IPV6_V6ONLY off, connected to [::1] (its address came from connect, so
     * it was never bound to one IPv6 address, which would have turned IPV6_V6ONLY on). */
    struct sockaddr_storage mapped = inet6("::ffff:127.0.0.1", port_of(listener));
    int client6m = socket(AF_INET6, SOCK_STREAM, 0);
    if (client6m < 0 || connect(client6m, (struct sockaddr *)&mapped, sizeof(struct sockaddr_in6)) != 0) die("client6m connect");
    int server6m = accept(listener, NULL, NULL);
    if (server6m < 0) die("accept client6m");
    /* Its packets are IPv4: the IPv4 level's TOS and TTL are the ones that count. */
    set_int(client6m, IPPROTO_IP, IP_TOS, 0x30, "IP_TOS client6m");
    set_int(client6m, IPPROTO_IP, IP_TTL, 44, "IP_TTL client6m");
    set_int(client6m, IPPROTO_IPV6, IPV6_DONTFRAG, 1, "IPV6_DONTFRAG client6m");
    int listener6 = socket(AF_INET6, SOCK_STREAM, 0);
    struct sockaddr_storage lo6 = inet6("::1", 0);
    socklen_t size6 = sizeof(lo6);
    if (listener6 < 0 || bind(listener6, (struct sockaddr *)&lo6, sizeof(struct sockaddr_in6)) != 0 || listen(listener6, 4) != 0
        || getsockname(listener6, (struct sockaddr *)&lo6, &size6) != 0) die("listener6");
    int client6 = socket(AF_INET6, SOCK_STREAM, 0);
    if (client6 < 0 || connect(client6, (struct sockaddr *)&lo6, sizeof(struct sockaddr_in6)) != 0) die("client6 connect");
    int server6 = accept(listener6, NULL, NULL);
    if (server6 < 0) die("accept client6");
    remember_all(client6m, "client6m", 1, 1, 0);
    remember_all(listener6, "listener6", 1, 1, 0);
    remember_all(client6, "client6", 1, 1, 0);
    remember_all(server6, "server6", 1, 1, 0);
    int v6only = -1;
    socklen_t v6only_size = sizeof(v6only);
    if (getsockopt(client6, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &v6only_size) != 0 || v6only != 0) die("client6 has IPV6_V6ONLY");
    struct sockaddr_storage name6m, name6;
    socklen_t name6m_size = sizeof(name6m), name6_size = sizeof(name6);
    getsockname(client6m, (struct sockaddr *)&name6m, &name6m_size);
    getsockname(client6, (struct sockaddr *)&name6, &name6_size);

    /* free4 and free6: listeners on addresses this host does not have. */
    int free4 = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_storage nonlocal = inet4("192.0.2.1", 4242);
    set_int(free4, IPPROTO_IP, IP_FREEBIND, 1, "IP_FREEBIND free4");
    /* Listener-only TCP options (a deferred accept, a Fast Open queue, an MSS of its own) and the newer ones. */
    set_int(free4, IPPROTO_TCP, TCP_DEFER_ACCEPT, 5, "TCP_DEFER_ACCEPT");
    set_int(free4, IPPROTO_TCP, TCP_FASTOPEN, 16, "TCP_FASTOPEN");
    /* A key of its own and a backup key (key rotation). */
    unsigned char keys[32];
    for (int i = 0; i < 32; i++) keys[i] = (unsigned char)(0x40 + i * 7);
    if (setsockopt(free4, IPPROTO_TCP, TCP_FASTOPEN_KEY, keys, sizeof(keys)) != 0) die("TCP_FASTOPEN_KEY");
    set_int(free4, SOL_SOCKET, SO_INCOMING_CPU, 1, "SO_INCOMING_CPU free4");
    set_int(free4, IPPROTO_TCP, TCP_WINDOW_CLAMP, 40000, "TCP_WINDOW_CLAMP");
    set_int(free4, IPPROTO_TCP, TCP_QUICKACK, 0, "TCP_QUICKACK");
    set_int(free4, IPPROTO_TCP, TCP_MAXSEG, 1200, "TCP_MAXSEG");
    set_int(free4, IPPROTO_TCP, TCP_SAVE_SYN, 1, "TCP_SAVE_SYN");
    set_int(free4, IPPROTO_TCP, TCP_TX_DELAY, 500, "TCP_TX_DELAY");
    set_int(free4, IPPROTO_TCP, TCP_FASTOPEN_NO_COOKIE, 1, "TCP_FASTOPEN_NO_COOKIE");
    set_int(free4, SOL_SOCKET, SO_BUSY_POLL, 50, "SO_BUSY_POLL");
    set_int(free4, SOL_SOCKET, SO_PREFER_BUSY_POLL, 1, "SO_PREFER_BUSY_POLL");
    set_int(free4, SOL_SOCKET, SO_ZEROCOPY, 1, "SO_ZEROCOPY");
    int known = 0;
    socklen_t known_size = sizeof(known);
    if (getsockopt(free4, IPPROTO_TCP, TCP_RTO_MIN_US_, &known, &known_size) == 0) {
        set_int(free4, IPPROTO_TCP, TCP_RTO_MIN_US_, 100000, "TCP_RTO_MIN_US");
        set_int(free4, IPPROTO_TCP, TCP_DELACK_MAX_US_, 50000, "TCP_DELACK_MAX_US");
    }
    if (getsockopt(free4, IPPROTO_TCP, TCP_RTO_MAX_MS_, &known, &known_size) == 0)
        set_int(free4, IPPROTO_TCP, TCP_RTO_MAX_MS_, 60000, "TCP_RTO_MAX_MS");
    if (bind(free4, (struct sockaddr *)&nonlocal, sizeof(struct sockaddr_in)) != 0 || listen(free4, 2) != 0) die("free4");
    set_int(free4, SOL_SOCKET, SO_NO_CHECK, 1, "SO_NO_CHECK free4");
    remember_all(free4, "free4", 0, 1, 0);
    remember(free4, "free4", "SO_NO_CHECK", SOL_SOCKET, SO_NO_CHECK);
    remember(free4, "free4", "SO_INCOMING_CPU", SOL_SOCKET, SO_INCOMING_CPU);
    remember(free4, "free4", "TCP_MAXSEG", IPPROTO_TCP, TCP_MAXSEG);

    /* md5: signed segments only (RFC 2385), keys that no getsockopt reads. */
    struct sockaddr_storage md5_address = inet4("127.0.0.2", 0);
    socklen_t md5_size = sizeof(md5_address);
    int md5 = socket(AF_INET, SOCK_STREAM, 0);
    if (md5 < 0 || add_md5_key(md5, "127.0.0.0", 8) != 0 || bind(md5, (struct sockaddr *)&md5_address, sizeof(struct sockaddr_in)) != 0
        || listen(md5, 4) != 0 || getsockname(md5, (struct sockaddr *)&md5_address, &md5_size) != 0) die("md5 listener");
    int md5client = socket(AF_INET, SOCK_STREAM, 0);
    if (md5client < 0 || add_md5_key(md5client, "127.0.0.2", 32) != 0
        || connect(md5client, (struct sockaddr *)&md5_address, md5_size) != 0) die("md5 connect");
    int md5server = accept(md5, NULL, NULL);
    if (md5server < 0) die("md5 accept");

    /* rp1, rp2: an SO_REUSEPORT group of two listeners on one port. */
    int rp[2];
    struct sockaddr_storage group_address = inet4("127.0.0.1", 0);
    socklen_t group_size = sizeof(group_address);
    for (int i = 0; i < 2; i++) {
        rp[i] = socket(AF_INET, SOCK_STREAM, 0);
        if (rp[i] < 0) die("rp socket");
        set_int(rp[i], SOL_SOCKET, SO_REUSEPORT, 1, "SO_REUSEPORT rp");
        if (bind(rp[i], (struct sockaddr *)&group_address, sizeof(struct sockaddr_in)) != 0 || listen(rp[i], 64) != 0
            || getsockname(rp[i], (struct sockaddr *)&group_address, &group_size) != 0) die("rp listener");
    }
    /* Still in the group, though a new listener could no longer join it beside rp1. */
    set_int(rp[0], SOL_SOCKET, SO_REUSEPORT, 0, "SO_REUSEPORT rp1 off");
    remember_all(rp[0], "rp1", 0, 1, 0);
    remember_all(rp[1], "rp2", 0, 1, 0);

    /* unfree4, unfree6: bound to addresses not here while IP_FREEBIND was on, off since. */
    int unfree4 = socket(AF_INET, SOCK_DGRAM, 0), unfree6 = socket(AF_INET6, SOCK_DGRAM, 0);
    struct sockaddr_storage unfree4_address = inet4("192.0.2.2", 4244), unfree6_address = inet6("2001:db8::2", 4245);
    if (unfree4 < 0 || unfree6 < 0) die("unfree sockets");
    set_int(unfree4, IPPROTO_IP, IP_FREEBIND, 1, "IP_FREEBIND unfree4");
    set_int(unfree6, IPPROTO_IP, IP_FREEBIND, 1, "IP_FREEBIND unfree6");
    if (bind(unfree4, (struct sockaddr *)&unfree4_address, sizeof(struct sockaddr_in)) != 0) die("bind unfree4");
    if (bind(unfree6, (struct sockaddr *)&unfree6_address, sizeof(struct sockaddr_in6)) != 0) die("bind unfree6");
    set_int(unfree4, IPPROTO_IP, IP_FREEBIND, 0, "IP_FREEBIND unfree4 off");
    set_int(unfree6, IPPROTO_IP, IP_FREEBIND, 0, "IP_FREEBIND unfree6 off");
    remember_all(unfree4, "unfree4", 0, 0, 0);
    remember_all(unfree6, "unfree6", 1, 0, 0);

    /* tfo: never bound nor connected, Fast Open asked for its connect, an MSS of its own. */
    int tfo = socket(AF_INET, SOCK_STREAM, 0);
    if (tfo < 0) die("tfo");
    set_int(tfo, IPPROTO_TCP, TCP_FASTOPEN_CONNECT, 1, "TCP_FASTOPEN_CONNECT");
    set_int(tfo, IPPROTO_TCP, TCP_MAXSEG, 1000, "TCP_MAXSEG tfo");
    set_int(tfo, IPPROTO_TCP, TCP_WINDOW_CLAMP, 20000, "TCP_WINDOW_CLAMP tfo");
    int range_known = 0;
    socklen_t range_size = sizeof(range_known);
    if (getsockopt(tfo, IPPROTO_IP, 51, &range_known, &range_size) == 0)
        set_int(tfo, IPPROTO_IP, 51 /* IP_LOCAL_PORT_RANGE */, 40000 | 41000 << 16, "IP_LOCAL_PORT_RANGE");
    remember_all(tfo, "tfo", 0, 1, 0);
    remember(tfo, "tfo", "TCP_MAXSEG", IPPROTO_TCP, TCP_MAXSEG);
    remember(tfo, "tfo", "TCP_FASTOPEN_CONNECT", IPPROTO_TCP, TCP_FASTOPEN_CONNECT);
    int free6 = socket(AF_INET6, SOCK_STREAM, 0);
    struct sockaddr_storage nonlocal6 = inet6("2001:db8::1", 4243);
    if (free6 < 0) die("AF_INET6");
    set_int(free6, IPPROTO_IPV6, IPV6_FREEBIND, 1, "IPV6_FREEBIND");
    set_int(free6, IPPROTO_IPV6, IPV6_V6ONLY, 1, "IPV6_V6ONLY");
    set_int(free6, IPPROTO_IPV6, IPV6_TCLASS, 0x48, "IPV6_TCLASS");
    set_int(free6, IPPROTO_IPV6, IPV6_UNICAST_HOPS, 17, "IPV6_UNICAST_HOPS");
    set_int(free6, IPPROTO_TCP, TCP_FASTOPEN, 8, "TCP_FASTOPEN free6");
    set_int(free6, IPPROTO_TCP, TCP_DEFER_ACCEPT, 2, "TCP_DEFER_ACCEPT free6");
    if (bind(free6, (struct sockaddr *)&nonlocal6, sizeof(struct sockaddr_in6)) != 0 || listen(free6, 2) != 0) die("free6");
    remember_all(free6, "free6", 1, 1, 0);

    /* udp4: broadcast, reuseport, transparent, multicast, cork without data, shut for reading. */
    int udp4 = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_storage any4 = inet4("0.0.0.0", 0);
    set_int(udp4, SOL_SOCKET, SO_BROADCAST, 1, "SO_BROADCAST");
    set_int(udp4, SOL_SOCKET, SO_REUSEPORT, 1, "SO_REUSEPORT");
    set_int(udp4, IPPROTO_IP, IP_TRANSPARENT, 1, "IP_TRANSPARENT");
    set_int(udp4, IPPROTO_IP, IP_MULTICAST_TTL, 9, "IP_MULTICAST_TTL");
    set_int(udp4, IPPROTO_IP, IP_MULTICAST_LOOP, 0, "IP_MULTICAST_LOOP");
    set_int(udp4, IPPROTO_UDP, UDP_CORK, 1, "UDP_CORK");
    set_int(udp4, SOL_SOCKET, SO_RCVBUF, 40000, "SO_RCVBUF udp4");
    set_int(udp4, IPPROTO_IP, IP_PKTINFO, 1, "IP_PKTINFO");
    set_int(udp4, IPPROTO_IP, IP_MULTICAST_ALL, 0, "IP_MULTICAST_ALL");
    set_int(udp4, IPPROTO_IP, IP_UNICAST_IF, (int)htonl(if_nametoindex("lo")), "IP_UNICAST_IF");
    struct in_addr loopback = { htonl(INADDR_LOOPBACK) };
    if (setsockopt(udp4, IPPROTO_IP, IP_MULTICAST_IF, &loopback, sizeof(loopback)) != 0) die("IP_MULTICAST_IF");
    set_int(udp4, IPPROTO_IP, IP_RECVTTL, 1, "IP_RECVTTL");
    set_int(udp4, IPPROTO_IP, IP_RECVTOS, 1, "IP_RECVTOS");
    set_int(udp4, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1, "IP_BIND_ADDRESS_NO_PORT");
    set_int(udp4, SOL_SOCKET, SO_TIMESTAMPNS, 1, "SO_TIMESTAMPNS");
    set_int(udp4, SOL_SOCKET, SO_RXQ_OVFL, 1, "SO_RXQ_OVFL");
    set_int(udp4, SOL_SOCKET, SO_SELECT_ERR_QUEUE, 1, "SO_SELECT_ERR_QUEUE");
    set_int(udp4, SOL_SOCKET, SO_INCOMING_CPU, 1, "SO_INCOMING_CPU udp4");
    set_int(udp4, SOL_SOCKET, SO_TIMESTAMPING, SOF_TIMESTAMPING_RX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE, "SO_TIMESTAMPING udp4");
    set_int(udp4, IPPROTO_IP, IP_RECVORIGDSTADDR, 1, "IP_RECVORIGDSTADDR udp4");
    set_int(udp4, IPPROTO_IP, IP_CHECKSUM, 1, "IP_CHECKSUM udp4");
    set_int(udp4, IPPROTO_IP, IP_RETOPTS, 1, "IP_RETOPTS udp4");
    pacing = 1000000;
    if (setsockopt(udp4, SOL_SOCKET, SO_MAX_PACING_RATE, &pacing, sizeof(pacing)) != 0) die("SO_MAX_PACING_RATE udp4");
    if (bind(udp4, (struct sockaddr *)&any4, sizeof(struct sockaddr_in)) != 0) die("udp4 bind");
    struct sockaddr_storage group4 = inet4("239.1.2.3", 0), ssm4 = inet4("232.1.1.1", 0), source4 = inet4("10.9.8.7", 0);
    join(udp4, IPPROTO_IP, group4, "MCAST_JOIN_GROUP udp4");
    join_source(udp4, ssm4, source4, "MCAST_JOIN_SOURCE_GROUP udp4");
    shutdown(udp4, SHUT_RD); /* ENOTCONN for an unconnected socket, yet it is shut down */
    set_int(udp4, SOL_SOCKET, SO_NO_CHECK, 1, "SO_NO_CHECK udp4");
    remember_all(udp4, "udp4", 0, 0, 2);
    remember(udp4, "udp4", "SO_NO_CHECK", SOL_SOCKET, SO_NO_CHECK);
    remember(udp4, "udp4", "SO_INCOMING_CPU", SOL_SOCKET, SO_INCOMING_CPU);

    /* udp6: connected, an IPv6 group, shut down for writing. */
    int udp6 = socket(AF_INET6, SOCK_DGRAM, 0);
    struct sockaddr_storage peer6 = inet6("::1", 9999), group6 = inet6("ff15::1234", 0);
    set_int(udp6, IPPROTO_IPV6, IPV6_MULTICAST_HOPS, 7, "IPV6_MULTICAST_HOPS");
    set_int(udp6, IPPROTO_IPV6, IPV6_MULTICAST_LOOP, 0, "IPV6_MULTICAST_LOOP");
    set_int(udp6, IPPROTO_IPV6, IPV6_TCLASS, 0x20, "IPV6_TCLASS udp6");
    set_int(udp6, IPPROTO_IPV6, IPV6_RECVPKTINFO, 1, "IPV6_RECVPKTINFO");
    set_int(udp6, IPPROTO_IPV6, IPV6_MULTICAST_IF, (int)if_nametoindex("lo"), "IPV6_MULTICAST_IF");
    set_int(udp6, IPPROTO_IPV6, IPV6_UNICAST_IF, (int)htonl(if_nametoindex("lo")), "IPV6_UNICAST_IF");
    set_int(udp6, IPPROTO_IPV6, IPV6_RECVHOPLIMIT, 1, "IPV6_RECVHOPLIMIT");
    set_int(udp6, IPPROTO_IPV6, IPV6_RECVTCLASS, 1, "IPV6_RECVTCLASS");
    set_int(udp6, IPPROTO_IPV6, IPV6_RECVERR, 1, "IPV6_RECVERR");
    set_int(udp6, IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_PROBE, "IPV6_MTU_DISCOVER");
    /* The IPv4 level of an IPv6 socket: what its datagrams to IPv4-mapped groups use. */
    set_int(udp6, IPPROTO_IP, IP_MULTICAST_TTL, 3, "IP_MULTICAST_TTL udp6");
    set_int(udp6, IPPROTO_IP, IP_MULTICAST_LOOP, 0, "IP_MULTICAST_LOOP udp6");
    if (setsockopt(udp6, IPPROTO_IP, IP_MULTICAST_IF, &(struct in_addr){ htonl(INADDR_LOOPBACK) }, sizeof(struct in_addr)) != 0)
        die("IP_MULTICAST_IF udp6");
    set_int(udp6, IPPROTO_IP, IP_TOS, 0x68, "IP_TOS udp6");
    set_int(udp6, IPPROTO_IP, IP_PKTINFO, 1, "IP_PKTINFO udp6");
    set_int(udp6, IPPROTO_IPV6, IPV6_ADDR_PREFERENCES, IPV6_PREFER_SRC_TMP, "IPV6_ADDR_PREFERENCES");
    set_int(udp6, IPPROTO_IPV6, IPV6_MINHOPCOUNT, 5, "IPV6_MINHOPCOUNT");
    set_int(udp6, IPPROTO_IPV6, IPV6_AUTOFLOWLABEL, 0, "IPV6_AUTOFLOWLABEL");
    set_int(udp6, IPPROTO_IPV6, IPV6_FLOWINFO, 1, "IPV6_FLOWINFO");
    set_int(udp6, IPPROTO_IPV6, IPV6_RECVORIGDSTADDR, 1, "IPV6_RECVORIGDSTADDR");
    set_int(udp6, IPPROTO_IPV6, IPV6_RECVPATHMTU, 1, "IPV6_RECVPATHMTU");
    set_int(udp6, IPPROTO_IPV6, IPV6_RECVRTHDR, 1, "IPV6_RECVRTHDR");
    set_int(udp6, IPPROTO_IPV6, IPV6_RECVHOPOPTS, 1, "IPV6_RECVHOPOPTS");
    set_int(udp6, IPPROTO_IPV6, IPV6_RECVDSTOPTS, 1, "IPV6_RECVDSTOPTS");
    if (connect(udp6, (struct sockaddr *)&peer6, sizeof(struct sockaddr_in6)) != 0) die("udp6 connect");
    join(udp6, IPPROTO_IPV6, group6, "MCAST_JOIN_GROUP udp6");
    if (shutdown(udp6, SHUT_WR) != 0) die("udp6 shutdown");
    remember_all(udp6, "udp6", 1, 0, 0);

    int udpboth = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_storage peer4 = inet4("127.0.0.1", 9998);
    if (connect(udpboth, (struct sockaddr *)&peer4, sizeof(struct sockaddr_in)) != 0 || shutdown(udpboth, SHUT_RDWR) != 0) die("udpboth");
    remember_all(udpboth, "udpboth", 0, 0, 0);

    /* lite: UDP-Lite bound to 127.0.0.1, checksum coverage 20 sent and 16 required, a datagram
     * from litesender (UDP-Lite too) queued; lite6: connected to [::1], shut down for writing. */
    int lite = socket(AF_INET, SOCK_DGRAM, IPPROTO_UDPLITE), litesender = socket(AF_INET, SOCK_DGRAM, IPPROTO_UDPLITE);
    struct sockaddr_storage lite_address = inet4("127.0.0.1", 0), sender_address = inet4("127.0.0.1", 0);
    socklen_t lite_size = sizeof(lite_address), sender_size = sizeof(sender_address);
    if (lite < 0 || litesender < 0) die("UDP-Lite socket");
    set_int(lite, IPPROTO_UDPLITE, 10 /* UDPLITE_SEND_CSCOV */, 20, "UDPLITE_SEND_CSCOV");
    set_int(lite, IPPROTO_UDPLITE, 11 /* UDPLITE_RECV_CSCOV */, 16, "UDPLITE_RECV_CSCOV");
    set_int(litesender, IPPROTO_UDPLITE, 10, 24, "UDPLITE_SEND_CSCOV sender");
    if (bind(lite, (struct sockaddr *)&lite_address, sizeof(struct sockaddr_in)) != 0 || getsockname(lite, (struct sockaddr *)&lite_address, &lite_size) != 0
        || bind(litesender, (struct sockaddr *)&sender_address, sizeof(struct sockaddr_in)) != 0
        || getsockname(litesender, (struct sockaddr *)&sender_address, &sender_size) != 0) die("UDP-Lite bind");
    if (sendto(litesender, "lite one", 8, 0, (struct sockaddr *)&lite_address, lite_size) != 8) die("UDP-Lite send");
    usleep(20000);
    remember_all(lite, "lite", 0, 0, 0);
    remember(lite, "lite", "UDPLITE_SEND_CSCOV", IPPROTO_UDPLITE, 10);
    remember(lite, "lite", "UDPLITE_RECV_CSCOV", IPPROTO_UDPLITE, 11);
    remember(litesender, "litesender", "UDPLITE_SEND_CSCOV", IPPROTO_UDPLITE, 10);
    int lite6 = socket(AF_INET6, SOCK_DGRAM, IPPROTO_UDPLITE);
    struct sockaddr_storage lite_peer6 = inet6("::1", 9997);
    if (lite6 < 0 || connect(lite6, (struct sockaddr *)&lite_peer6, sizeof(struct sockaddr_in6)) != 0 || shutdown(lite6, SHUT_WR) != 0) die("lite6");
    remember_all(lite6, "lite6", 1, 0, 0);

    int sources = 0;
    if (membership(udp4, IPPROTO_IP, &group4, &sources) != MCAST_EXCLUDE || sources != 0) die("udp4 group not joined");
    if (membership(udp4, IPPROTO_IP, &ssm4, &sources) != MCAST_INCLUDE || sources != 1) die("udp4 source group not joined");
    if (membership(udp6, IPPROTO_IPV6, &group6, &sources) != MCAST_EXCLUDE) die("udp6 group not joined");

    wait_for_term();

    compare_all();
    if (port_of(unfree4) != 4244 || port_of(unfree6) != 4245) fail("unfree4/unfree6: bound to ports %d and %d", port_of(unfree4), port_of(unfree6));
    int mode = membership(udp4, IPPROTO_IP, &group4, &sources);
    if (mode != MCAST_EXCLUDE || sources != 0) fail("udp4: membership of 239.1.2.3 on lo lost (mode %d, %d sources)", mode, sources);
    mode = membership(udp4, IPPROTO_IP, &ssm4, &sources);
    if (mode != MCAST_INCLUDE || sources != 1) fail("udp4: source-specific membership of 232.1.1.1 lost (mode %d, %d sources)", mode, sources);
    mode = membership(udp6, IPPROTO_IPV6, &group6, &sources);
    if (mode != MCAST_EXCLUDE) fail("udp6: membership of ff15::1234 on lo lost (mode %d)", mode);
    if (membership(udp4, IPPROTO_IP, &group4, &sources) >= 0 && membership(udpboth, IPPROTO_IP, &group4, &sources) >= 0)
        fail("udpboth: joined a group it never joined");

    /* Shutdowns: udp4 reads end of stream at once, udp6 cannot send, udpboth neither. */
    struct pollfd p = { .fd = udp4, .events = POLLIN | POLLRDHUP };
    if (poll(&p, 1, 0) != 1 || !(p.revents & POLLRDHUP)) fail("udp4: no longer shut down for reading");
    if (send(udp6, "x", 1, 0) != -1 || errno != EPIPE) fail("udp6: can send after SHUT_WR (%s)", strerror(errno));
    if (send(udpboth, "x", 1, 0) != -1 || errno != EPIPE) fail("udpboth: can send after SHUT_RDWR");
    p = (struct pollfd){ .fd = udpboth, .events = POLLIN };
    if (poll(&p, 1, 0) != 1 || !(p.revents & POLLHUP)) fail("udpboth: no POLLHUP");
    if (send(udp4, "x", 1, 0) == -1 && errno == EPIPE) fail("udp4: shut down for writing too");

    /* The connection still carries bytes; the client's cork holds a short write until uncorked. */
    if (send(client, "hello", 5, 0) != 5) fail("client send: %s", strerror(errno));
    set_int(client, IPPROTO_TCP, TCP_CORK, 0, "uncork");
    char buffer[16] = { 0 };
    struct timeval tv = { 5, 0 };
    setsockopt(server, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    size_t have = 0;
    while (have < 5) {
        ssize_t n = recv(server, buffer + have, 5 - have, 0);
        if (n <= 0) break;
        have += (size_t)n;
    }
    if (have != 5 || memcmp(buffer, "hello", 5) != 0) fail("server read %zu bytes of hello", have);
    /* The reuseport group: both on the port still, and connections spread over both (32 of them
     * all hashed to one listener: one chance in 2^31). */
    int taken[2] = { 0, 0 };
    for (int i = 0; i < 2; i++) {
        struct sockaddr_storage name;
        socklen_t name_size = sizeof(name);
        if (getsockname(rp[i], (struct sockaddr *)&name, &name_size) != 0 || memcmp(&name, &group_address, group_size) != 0)
            fail("rp%d: no longer on the group's port", i + 1);
    }
    for (int i = 0; i < 32; i++) {
        int c = socket(AF_INET, SOCK_STREAM, 0);
        if (c < 0 || connect(c, (struct sockaddr *)&group_address, group_size) != 0) { fail("rp: connect %d: %s", i, strerror(errno)); break; }
        struct pollfd rpp[2] = { { .fd = rp[0], .events = POLLIN }, { .fd = rp[1], .events = POLLIN } };
        if (poll(rpp, 2, 5000) < 1) { fail("rp: connection %d reached no listener", i); break; }
        for (int k = 0; k < 2; k++) {
            if (!(rpp[k].revents & POLLIN)) continue;
            int a = accept(rp[k], NULL, NULL);
            if (a >= 0) { taken[k]++; close(a); }
        }
        close(c);
    }
    if (!taken[0] || !taken[1]) fail("rp: one listener took every connection (%d and %d): no longer one group", taken[0], taken[1]);

    /* UDP-Lite: the queued datagram from its sender, then a new one; lite6 cannot send. */
    for (int i = 0; i < 2; i++) {
        char datagram[16] = { 0 };
        struct sockaddr_storage from;
        socklen_t from_size = sizeof(from);
        if (i == 1 && sendto(litesender, "lite two", 8, 0, (struct sockaddr *)&lite_address, lite_size) != 8) fail("litesender: %s", strerror(errno));
        struct pollfd lp = { .fd = lite, .events = POLLIN };
        ssize_t n = poll(&lp, 1, 5000) == 1 ? recvfrom(lite, datagram, sizeof(datagram), MSG_DONTWAIT, (struct sockaddr *)&from, &from_size) : -1;
        if (n != 8 || memcmp(datagram, i ? "lite two" : "lite one", 8) != 0) fail("lite: datagram %d: %zd bytes", i + 1, n);
        else if (from_size != sender_size || memcmp(&from, &sender_address, from_size) != 0) fail("lite: datagram %d from another address", i + 1);
    }
    if (send(lite6, "x", 1, 0) != -1 || errno != EPIPE) fail("lite6: can send after SHUT_WR (%s)", strerror(errno));

    /* The IPv6 connections keep their addresses and carry bytes both ways. */
    struct sockaddr_storage now6;
    socklen_t now6_size = sizeof(now6);
    if (getsockname(client6m, (struct sockaddr *)&now6, &now6_size) != 0 || now6_size != name6m_size || memcmp(&now6, &name6m, now6_size) != 0)
        fail("client6m: another local address");
    now6_size = sizeof(now6);
    if (getsockname(client6, (struct sockaddr *)&now6, &now6_size) != 0 || now6_size != name6_size || memcmp(&now6, &name6, now6_size) != 0)
        fail("client6: another local address");
    int pairs[2][2] = { { client6m, server6m }, { server6, client6 } };
    for (int i = 0; i < 2; i++) {
        char byte = 0;
        setsockopt(pairs[i][1], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        if (send(pairs[i][0], "6", 1, 0) != 1 || recv(pairs[i][1], &byte, 1, 0) != 1 || byte != '6')
            fail("%s: a byte did not cross (%s)", i ? "server6 -> client6" : "client6m -> server6m", strerror(errno));
    }
    int fresh = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(fresh, (struct sockaddr *)&address, size) != 0) fail("listener no longer accepts (%s)", strerror(errno));

    /* md5: the connection still signs both ways; the listener still takes only signed SYNs. */
    char md5byte = 0;
    setsockopt(md5server, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(md5client, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    if (send(md5client, "m", 1, 0) != 1 || recv(md5server, &md5byte, 1, 0) != 1 || md5byte != 'm') fail("md5: client -> server lost (keys?)");
    if (send(md5server, "d", 1, 0) != 1 || recv(md5client, &md5byte, 1, 0) != 1 || md5byte != 'd') fail("md5: server -> client lost (keys?)");
    int signed_client = socket(AF_INET, SOCK_STREAM, 0);
    if (add_md5_key(signed_client, "127.0.0.2", 32) != 0 || !connects(signed_client, &md5_address, md5_size, 3000))
        fail("md5: a client with the key cannot connect");
    int plain_client = socket(AF_INET, SOCK_STREAM, 0);
    if (connects(plain_client, &md5_address, md5_size, 300)) fail("md5: a client without a key connected (the listener lost its key)");
    (void)free4; (void)free6; (void)tfo; (void)md5;

    if (failbuf[0]) { printf("FAIL: %s\n", failbuf); fflush(stdout); return 1; }
    printf("PASS\n");
    fflush(stdout);
    return 0;
}
