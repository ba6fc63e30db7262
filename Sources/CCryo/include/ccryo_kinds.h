/*
 * What the descriptor kinds need of C that Glibc's Swift module does not
 * import: the headers of eventfd, timerfd, signalfd, epoll, inotify, netlink
 * sock_diag and TCP, two GNU-only declarations, and the request numbers that
 * the kernel headers build with function-like macros. No code.
 */
#ifndef CCRYO_KINDS_H
#define CCRYO_KINDS_H

#include <stdint.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <sys/signalfd.h>
#include <sys/epoll.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <linux/unix_diag.h>
#include <linux/netlink_diag.h>
#include <linux/packet_diag.h>
#include <linux/if_packet.h>
#include <linux/sockios.h>
#include <linux/inet_diag.h>
#include <linux/filter.h>
#include <net/if.h>

/* GNU-only (the module is not built with _GNU_SOURCE; ccryo.c is). */
#ifndef __USE_GNU
struct file_handle;
int memfd_create(const char *name, unsigned int flags);
int open_by_handle_at(int mount_fd, struct file_handle *handle, int flags);
int accept4(int fd, struct sockaddr *address, socklen_t *length, int flags);
#endif
static const int CRYO_MFD_CLOEXEC = 1, CRYO_MFD_ALLOW_SEALING = 2;
static const int CRYO_F_ADD_SEALS = 1033, CRYO_F_GET_SEALS = 1034;
static const int CRYO_O_PATH = 010000000;

/* ioctl requests. */
static const unsigned long CRYO_TFD_IOC_SET_TICKS = _IOW('T', 0, uint64_t);
static const unsigned long CRYO_INOTIFY_IOC_SETNEXTWD = _IOW('I', 0, int32_t);
static const unsigned long CRYO_TIOCGPTLCK = TIOCGPTLCK, CRYO_TIOCSPTLCK = TIOCSPTLCK;
static const unsigned long CRYO_TIOCGPTN = TIOCGPTN, CRYO_TIOCGPTPEER = TIOCGPTPEER;
static const unsigned long CRYO_SIOCINQ = SIOCINQ, CRYO_SIOCOUTQ = SIOCOUTQ, CRYO_SIOCOUTQNSD = SIOCOUTQNSD;

/* Socket options by the numbers of the kernel's uapi (ccryo.c checks them against libc's). */
#define CRYO_SOL_SOCKET 1
#define CRYO_SO_TYPE 3
#define CRYO_SO_SNDBUF 7
#define CRYO_SO_RCVBUF 8
#define CRYO_SO_PASSCRED 16
#define CRYO_SO_SNDBUFFORCE 32
#define CRYO_SO_RCVBUFFORCE 33
#define CRYO_SO_PEEK_OFF 42
#define CRYO_SO_MARK 36
#define CRYO_SO_REUSEADDR 2
#define CRYO_SO_BROADCAST 6
#define CRYO_SO_KEEPALIVE 9
#define CRYO_SO_REUSEPORT 15
#define CRYO_SO_PROTOCOL 38
#define CRYO_IPPROTO_IP 0
#define CRYO_IPPROTO_TCP 6
#define CRYO_IPPROTO_UDP 17
#define CRYO_IPPROTO_IPV6 41
#define CRYO_IP_TTL 2
#define CRYO_IPV6_UNICAST_HOPS 16
#define CRYO_IPV6_V6ONLY 26
#define CRYO_TCP_NODELAY 1
#define CRYO_TCP_MAXSEG 2
#define CRYO_TCP_REPAIR 19
#define CRYO_TCP_REPAIR_QUEUE 20
#define CRYO_TCP_QUEUE_SEQ 21
#define CRYO_TCP_TIMESTAMP 24
#define CRYO_TCP_RECV_QUEUE 1
#define CRYO_TCP_SEND_QUEUE 2
#define CRYO_SO_DONTROUTE 5
#define CRYO_SO_OOBINLINE 10
#define CRYO_SO_PRIORITY 12
#define CRYO_SO_LINGER 13
#define CRYO_SO_RCVLOWAT 18
#define CRYO_SO_RCVTIMEO_OLD 20
#define CRYO_SO_SNDTIMEO_OLD 21
#define CRYO_SO_BINDTODEVICE 25
#define CRYO_SO_ATTACH_FILTER 26 /* also SO_GET_FILTER */
#define CRYO_SO_LOCK_FILTER 44
#define CRYO_SO_BUF_LOCK 72
#define CRYO_IP_TOS 1
#define CRYO_IP_FREEBIND 15
#define CRYO_IP_TRANSPARENT 19
#define CRYO_IP_MULTICAST_TTL 33
#define CRYO_IP_MULTICAST_LOOP 34
#define CRYO_MCAST_JOIN_GROUP 42
#define CRYO_MCAST_MSFILTER 48
#define CRYO_IPV6_MULTICAST_HOPS 18
#define CRYO_IPV6_MULTICAST_LOOP 19
#define CRYO_IPV6_TCLASS 67
#define CRYO_IPV6_TRANSPARENT 75
#define CRYO_IPV6_FREEBIND 78
#define CRYO_TCP_CORK 3
#define CRYO_TCP_KEEPIDLE 4
#define CRYO_TCP_KEEPINTVL 5
#define CRYO_TCP_KEEPCNT 6
#define CRYO_TCP_CONGESTION 13
#define CRYO_TCP_USER_TIMEOUT 18
#define CRYO_UDP_CORK 1
#define CRYO_SOL_NETLINK 270
#define CRYO_SOL_PACKET 263
#define CRYO_NETLINK_ADD_MEMBERSHIP 1
#define CRYO_NETLINK_PKTINFO 3
#define CRYO_NETLINK_BROADCAST_ERROR 4
#define CRYO_NETLINK_NO_ENOBUFS 5
#define CRYO_NETLINK_LISTEN_ALL_NSID 8
#define CRYO_NETLINK_LIST_MEMBERSHIPS 9
#define CRYO_NETLINK_CAP_ACK 10
#define CRYO_NETLINK_EXT_ACK 11
#define CRYO_NETLINK_GET_STRICT_CHK 12

/* netlink attribute types carry flag bits above these. */
static const uint16_t CRYO_NLA_TYPE_MASK = (uint16_t)NLA_TYPE_MASK;
static const uint16_t CRYO_NLM_F_DUMP = NLM_F_DUMP;

#endif
