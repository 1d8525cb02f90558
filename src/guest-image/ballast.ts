/**
 * The test guest's memory ballast: a small C program compiled statically on
 * the host when the image is built (gcc -static), installed as
 * /usr/sbin/dormant-ballast on the root disk and started by /sbin/init when
 * the kernel command line says `dormant.ballast=BYTES`.
 *
 * It makes the guest use its memory the way a real service does:
 *   - at boot it fills BYTES of anonymous memory, every page distinct: the
 *     first `dormant.ballast_shared=PERCENT` of it with content identical in
 *     every guest (an application image everyone loads), the rest with
 *     content seeded by the hostname (its own data);
 *   - then it sleeps, and reads a small fixed set of pages at each timer
 *     tick (`dormant.tick=SECONDS`, default 10) and another fixed set at each
 *     request (SIGUSR1, sent by the page's CGIs), writing one word of its own
 *     data per request. The two sets are apart, so a pager that learns per
 *     event sees a timer working set and a network working set.
 * It writes its pid to /run/ballast.pid once the fill is done and says so
 * on the console (`dormant-ballast: filled ...`); init waits for that
 * before it starts the web server, so a guest that answers HTTP is full.
 */

/** Pages the timer tick reads (half in the shared part, half in the VM's own). */
export const BALLAST_TICK_PAGES = 32;
/** Pages a request reads (half shared, half own). */
export const BALLAST_REQUEST_PAGES = 256;

/** The program's source (C, no dependencies beyond libc). */
export const BALLAST_C = `/* dormant test guest: memory ballast (see src/guest-image/ballast.ts). */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096u
#define WORDS (PAGE / 8u)

static volatile sig_atomic_t requests;
static volatile uint64_t sink;

static void on_request(int sig) { (void)sig; requests++; }

static uint64_t mix(uint64_t x) {
  x ^= x >> 33; x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}

/* Page p gets words of a xorshift stream seeded by (seed, p): distinct per page and per seed. */
static void fill(uint64_t *w, uint64_t seed, uint64_t p) {
  uint64_t s = mix(seed ^ ((p + 1) * 0x9e3779b97f4a7c15ULL)) | 1;
  for (unsigned i = 0; i < WORDS; i++) {
    s ^= s << 13; s ^= s >> 7; s ^= s << 17;
    w[i] = s;
  }
}

static uint64_t hash_text(const char *t) {
  uint64_t h = 1469598103934665603ULL;
  for (; *t; t++) { h ^= (unsigned char)*t; h *= 1099511628211ULL; }
  return mix(h);
}

/* Reads n pages from page first (wrapping within [lo, lo + len)). */
static void touch(const uint64_t *base, uint64_t lo, uint64_t len, uint64_t first, uint64_t n) {
  uint64_t sum = 0;
  if (len == 0) return;
  for (uint64_t k = 0; k < n; k++) sum += base[(lo + (first + k) % len) * WORDS];
  sink += sum;
}

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: dormant-ballast BYTES SHARED_PERCENT TICK_SECONDS HOSTNAME\\n");
    return 2;
  }
  uint64_t pages = strtoull(argv[1], NULL, 10) / PAGE;
  unsigned pct = (unsigned)atoi(argv[2]);
  unsigned tick = (unsigned)atoi(argv[3]);
  if (pct > 100) pct = 100;
  if (tick == 0) tick = 10;
  uint64_t shared = pages * pct / 100, own = pages - shared;
  uint64_t *base = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) { perror("dormant-ballast: mmap"); return 1; }
  madvise(base, pages * PAGE, MADV_NOHUGEPAGE);
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  const uint64_t common = 0x646f726d616e7421ULL, mine = hash_text(argv[4]);
  for (uint64_t p = 0; p < pages; p++) fill(base + p * WORDS, p < shared ? common : mine, p);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_request;
  sigaction(SIGUSR1, &sa, NULL);
  FILE *f = fopen("/run/ballast.pid", "w");
  if (f) { fprintf(f, "%d\\n", (int)getpid()); fclose(f); }
  printf("dormant-ballast: filled %llu MiB (%llu MiB shared) in %.1f s; tick %u s\\n",
    (unsigned long long)(pages * PAGE >> 20), (unsigned long long)(shared * PAGE >> 20),
    (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9, tick);
  fflush(stdout);
  /* Timer set: the first pages of each part. Request set: pages from the middle of each part. */
  const uint64_t tick_half = ${BALLAST_TICK_PAGES / 2}, req_half = ${BALLAST_REQUEST_PAGES / 2};
  uint64_t served = 0;
  struct timespec next;
  clock_gettime(CLOCK_MONOTONIC, &next);
  for (;;) {
    next.tv_sec += tick;
    int r;
    do {
      r = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
      while (served != (uint64_t)requests) {
        served++;
        touch(base, 0, shared, shared / 2, req_half);
        touch(base, shared, own, own / 2, req_half);
        if (own > 0) base[(shared + own / 2) * WORDS + 1] = served;
      }
    } while (r == EINTR);
    if (r != 0) { fprintf(stderr, "dormant-ballast: clock_nanosleep: %s\\n", strerror(r)); return 1; }
    touch(base, 0, shared, 0, tick_half);
    touch(base, shared, own, 0, tick_half);
  }
}
`;
