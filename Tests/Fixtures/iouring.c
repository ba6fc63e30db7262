/*
 * iouring: an io_uring instance with its rings mapped, as MariaDB's InnoDB
 * sets one up by default. cryo refuses it at dump, naming io_uring; the
 * process must go on untouched: after SIGTERM a NOP still completes.
 */
#define _GNU_SOURCE
#include <linux/io_uring.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include "fixture.h"

static volatile sig_atomic_t term;
static void on_term(int sig) { (void)sig; term = 1; }

int main(void) {
    signal(SIGTERM, on_term);
    struct io_uring_params params = { 0 };
    int ring = (int)syscall(__NR_io_uring_setup, 4, &params);
    if (ring < 0) {
        printf("FAIL: setup: io_uring_setup: %s\n", strerror(errno));
        return 1;
    }
    size_t sq_size = params.sq_off.array + params.sq_entries * sizeof(uint32_t);
    size_t cq_size = params.cq_off.cqes + params.cq_entries * sizeof(struct io_uring_cqe);
    char *sq = mmap(NULL, sq_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring, IORING_OFF_SQ_RING);
    char *cq = mmap(NULL, cq_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring, IORING_OFF_CQ_RING);
    struct io_uring_sqe *sqes = mmap(NULL, params.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
                                     MAP_SHARED | MAP_POPULATE, ring, IORING_OFF_SQES);
    if (sq == MAP_FAILED || cq == MAP_FAILED || sqes == MAP_FAILED) {
        printf("FAIL: setup: mmap: %s\n", strerror(errno));
        return 1;
    }
    printf("RING %d\n", ring);
    ready_then_wait(&term);
    /* One NOP through the rings: they are still the kernel's. */
    uint32_t *tail = (uint32_t *)(sq + params.sq_off.tail), *array = (uint32_t *)(sq + params.sq_off.array);
    uint32_t index = *tail & *(uint32_t *)(sq + params.sq_off.ring_mask);
    memset(&sqes[index], 0, sizeof(sqes[index]));
    sqes[index].opcode = IORING_OP_NOP;
    sqes[index].user_data = 0x4242;
    array[index] = index;
    __atomic_store_n(tail, *tail + 1, __ATOMIC_RELEASE);
    if (syscall(__NR_io_uring_enter, ring, 1, 1, IORING_ENTER_GETEVENTS, NULL, 0) != 1) {
        fail("io_uring_enter: %s", strerror(errno));
    } else {
        uint32_t head = *(uint32_t *)(cq + params.cq_off.head);
        struct io_uring_cqe *cqes = (struct io_uring_cqe *)(cq + params.cq_off.cqes);
        struct io_uring_cqe *cqe = &cqes[head & *(uint32_t *)(cq + params.cq_off.ring_mask)];
        if (cqe->user_data != 0x4242 || cqe->res != 0) fail("the NOP completed as 0x%llx, %d", (unsigned long long)cqe->user_data, cqe->res);
    }
    if (failbuf[0]) {
        printf("FAIL: %s\n", failbuf);
        return 1;
    }
    printf("PASS\n");
    return 0;
}
