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
#include <linux/sockios.h>

/* GNU-only (the module is not built with _GNU_SOURCE). */
struct file_handle;
int memfd_create(const char *name, unsigned int flags);
int open_by_handle_at(int mount_fd, struct file_handle *handle, int flags);
static const int CRYO_MFD_CLOEXEC = 1, CRYO_MFD_ALLOW_SEALING = 2;
static const int CRYO_F_ADD_SEALS = 1033, CRYO_F_GET_SEALS = 1034;
static const int CRYO_O_PATH = 010000000;

/* ioctl requests. */
static const unsigned long CRYO_TFD_IOC_SET_TICKS = _IOW('T', 0, uint64_t);
static const unsigned long CRYO_INOTIFY_IOC_SETNEXTWD = _IOW('I', 0, int32_t);
static const unsigned long CRYO_TIOCGPTLCK = TIOCGPTLCK, CRYO_TIOCSPTLCK = TIOCSPTLCK;
static const unsigned long CRYO_TIOCGPTN = TIOCGPTN, CRYO_TIOCGPTPEER = TIOCGPTPEER;
static const unsigned long CRYO_SIOCINQ = SIOCINQ, CRYO_SIOCOUTQ = SIOCOUTQ, CRYO_SIOCOUTQNSD = SIOCOUTQNSD;

/* netlink attribute types carry flag bits above these. */
static const uint16_t CRYO_NLA_TYPE_MASK = NLA_TYPE_MASK;
static const uint16_t CRYO_NLM_F_DUMP = NLM_F_DUMP;

#endif
