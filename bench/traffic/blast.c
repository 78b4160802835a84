// SPDX-License-Identifier: BSD-3-Clause
/*
 * The datagram tool of the real-traffic benchmark (bench/traffic.ts). Run
 * inside a scratch network namespace whose routes deliver every address
 * locally (local 0.0.0.0/0 and ::/0 on lo), so each datagram it sends goes
 * through the namespace's sk_lookup programs once.
 *
 *   blast --dests FILE --labels N [--v4] [--v6] [--window W] [--timeout-ms T]
 *         [--sender-cpu C] [--receiver-cpu C]
 *
 * It opens one UDP socket per label and family (127.0.0.1 / ::1, kernel-chosen
 * ports, IPv6 ones V6ONLY, large receive buffers) and prints one JSON line,
 * {"pid":…,"v4":[ports],"v6":[ports]}, so the harness can take the sockets
 * with pidfd_getfd and register them. Then, for each stdin line
 * "run COUNT START label|fixed", it sends COUNT datagrams cycling through the
 * destinations file from START, and prints one JSON line of results.
 *
 * FILE: 24-byte records {u8 family (4|6); u8 pad; u16 port; u32 label;
 * u8 address[16] (network order, IPv4 in the first 4)}, little-endian.
 *
 * Soundness: the sender keeps at most W datagrams in flight (sent - received),
 * so no receive queue can overflow and every loss is a real loss; each
 * datagram carries (run, destination index, expected label) and the receiver
 * (epoll + recvmmsg over the label sockets) checks that it arrived on the
 * expected label's socket ("fixed": label 0, the assign-only program's
 * socket) and counts deliveries per destination. A run that stops making
 * progress for T ms ends and reports what is missing.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define MAX_LABELS 512
#define MAX_REPORT 8

struct dest {
	uint8_t family;
	uint8_t pad;
	uint16_t port;
	uint32_t label;
	uint8_t addr[16];
};

struct payload {
	uint32_t run;
	uint32_t dest;
	uint32_t label;
};

union sa {
	struct sockaddr_in v4;
	struct sockaddr_in6 v6;
};

static struct dest *dests;
static union sa *addrs;
static uint32_t ndests;
static int nlabels, use4, use6;
static int sockets4[MAX_LABELS], sockets6[MAX_LABELS];
static int sender4 = -1, sender6 = -1;
static long window = 4096;
static long timeout_ms = 5000;
static int sender_cpu = -1, receiver_cpu = -1;

/* The current run, set by the main thread before its sender starts. */
static _Atomic uint32_t run_id;
static int fixed_mode;
static uint32_t *sent_per_dest, *recv_per_dest;
static _Atomic uint64_t received, stale, garbage, misrouted;
static _Atomic uint64_t last_recv_ns;
static pthread_mutex_t report_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
	uint32_t dest, expected, got, family;
} mismatches[MAX_REPORT];
static int nmismatches;
static _Atomic int stopping;

/* The sender's state, read by the main thread after join. */
static uint64_t run_count, run_start;
static uint64_t sent, send_errors;
static int first_send_errno;
static int stalled;
static uint64_t first_send_ns;

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static void die(const char *what)
{
	fprintf(stderr, "blast: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void pin(int cpu)
{
	cpu_set_t set;

	if (cpu < 0)
		return;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (pthread_setaffinity_np(pthread_self(), sizeof(set), &set))
		fprintf(stderr, "blast: cannot pin to CPU %d\n", cpu);
}

static int label_socket(int family)
{
	int fd = socket(family == 4 ? AF_INET : AF_INET6, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int size = 32 << 20, one = 1;
	union sa a = { 0 };

	if (fd < 0)
		die("socket");
	/* A limit, not an allocation: the window bounds what is queued. */
	if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof(size)))
		die("SO_RCVBUFFORCE");
	if (family == 4) {
		a.v4.sin_family = AF_INET;
		a.v4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		if (bind(fd, (struct sockaddr *)&a.v4, sizeof(a.v4)))
			die("bind 127.0.0.1");
	} else {
		if (setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)))
			die("IPV6_V6ONLY");
		a.v6.sin6_family = AF_INET6;
		a.v6.sin6_addr = in6addr_loopback;
		if (bind(fd, (struct sockaddr *)&a.v6, sizeof(a.v6)))
			die("bind ::1");
	}
	return fd;
}

static int local_port(int fd)
{
	union sa a;
	socklen_t len = sizeof(a);

	if (getsockname(fd, (struct sockaddr *)&a, &len))
		die("getsockname");
	return ntohs(a.v4.sin_family == AF_INET ? a.v4.sin_port : a.v6.sin6_port);
}

static void load_dests(const char *file)
{
	FILE *f = fopen(file, "rb");
	long size;

	if (!f)
		die(file);
	fseek(f, 0, SEEK_END);
	size = ftell(f);
	fseek(f, 0, SEEK_SET);
	if (size <= 0 || size % sizeof(struct dest)) {
		fprintf(stderr, "blast: %s: not a list of 24-byte records\n", file);
		exit(1);
	}
	ndests = size / sizeof(struct dest);
	dests = malloc(size);
	addrs = calloc(ndests, sizeof(*addrs));
	sent_per_dest = calloc(ndests, sizeof(uint32_t));
	recv_per_dest = calloc(ndests, sizeof(uint32_t));
	if (!dests || !addrs || !sent_per_dest || !recv_per_dest)
		die("malloc");
	if (fread(dests, sizeof(struct dest), ndests, f) != ndests)
		die("fread");
	fclose(f);
	for (uint32_t i = 0; i < ndests; i++) {
		struct dest *d = &dests[i];

		if ((d->family != 4 && d->family != 6) || d->label >= (uint32_t)nlabels ||
		    (d->family == 4 && !use4) || (d->family == 6 && !use6)) {
			fprintf(stderr, "blast: destination %u: family %u label %u not served\n", i, d->family, d->label);
			exit(1);
		}
		if (d->family == 4) {
			addrs[i].v4.sin_family = AF_INET;
			addrs[i].v4.sin_port = htons(d->port);
			memcpy(&addrs[i].v4.sin_addr, d->addr, 4);
		} else {
			addrs[i].v6.sin6_family = AF_INET6;
			addrs[i].v6.sin6_port = htons(d->port);
			memcpy(&addrs[i].v6.sin6_addr, d->addr, 16);
		}
	}
}

static void *receiver(void *arg)
{
	int ep = *(int *)arg;
	struct epoll_event events[64];
	struct mmsghdr msgs[BATCH];
	struct iovec iov[BATCH];
	struct payload bufs[BATCH + 1];

	pin(receiver_cpu);
	for (int i = 0; i < BATCH; i++) {
		iov[i].iov_base = &bufs[i];
		iov[i].iov_len = sizeof(bufs[i]) + 1; /* a longer datagram shows as truncated */
	}
	while (!atomic_load(&stopping)) {
		int n = epoll_wait(ep, events, 64, 50);

		for (int e = 0; e < n; e++) {
			int fd = events[e].data.u64 >> 32;
			uint32_t tag = (uint32_t)events[e].data.u64;
			uint32_t label = tag & 0xffff, family = tag >> 16;

			for (;;) {
				memset(msgs, 0, sizeof(msgs));
				for (int i = 0; i < BATCH; i++) {
					msgs[i].msg_hdr.msg_iov = &iov[i];
					msgs[i].msg_hdr.msg_iovlen = 1;
				}
				int got = recvmmsg(fd, msgs, BATCH, MSG_DONTWAIT, NULL);
				if (got <= 0)
					break;
				uint32_t run = atomic_load_explicit(&run_id, memory_order_acquire);
				uint64_t ok = 0;
				for (int i = 0; i < got; i++) {
					struct payload *p = &bufs[i];

					if (msgs[i].msg_len != sizeof(*p) || p->dest >= ndests) {
						atomic_fetch_add(&garbage, 1);
						continue;
					}
					if (p->run != run) {
						atomic_fetch_add(&stale, 1);
						continue;
					}
					uint32_t expected = fixed_mode ? 0 : dests[p->dest].label;
					if (label != expected || family != dests[p->dest].family || p->label != dests[p->dest].label) {
						atomic_fetch_add(&misrouted, 1);
						pthread_mutex_lock(&report_lock);
						if (nmismatches < MAX_REPORT) {
							mismatches[nmismatches].dest = p->dest;
							mismatches[nmismatches].expected = expected;
							mismatches[nmismatches].got = label;
							mismatches[nmismatches].family = family;
							nmismatches++;
						}
						pthread_mutex_unlock(&report_lock);
					}
					recv_per_dest[p->dest]++;
					ok++;
				}
				if (ok) {
					atomic_store(&last_recv_ns, now_ns());
					atomic_fetch_add_explicit(&received, ok, memory_order_release);
				}
				if (got < BATCH)
					break;
			}
		}
	}
	return NULL;
}

/* Sends one family's part of a batch; retries what the kernel did not take. */
static int send_all(int fd, struct mmsghdr *msgs, int n)
{
	int done = 0;

	while (done < n) {
		int r = sendmmsg(fd, msgs + done, n - done, 0);

		if (r < 0) {
			if (errno == EINTR || errno == EAGAIN || errno == ENOBUFS) {
				sched_yield();
				continue;
			}
			send_errors++;
			if (!first_send_errno)
				first_send_errno = errno;
			/* Skip the datagram the kernel refused (it counts as sent, so it shows as missing). */
			done++;
			continue;
		}
		done += r;
	}
	return done;
}

static void *sender(void *arg)
{
	static struct mmsghdr m4[BATCH], m6[BATCH];
	static struct iovec iov4[BATCH], iov6[BATCH];
	static struct payload p4[BATCH], p6[BATCH];
	uint32_t run = atomic_load(&run_id);
	uint64_t idx = run_start % ndests;
	uint64_t progress_at = now_ns(), seen = 0;

	(void)arg;
	pin(sender_cpu);
	first_send_ns = now_ns();
	while (sent < run_count) {
		uint64_t r = atomic_load_explicit(&received, memory_order_acquire);

		if (r != seen) {
			seen = r;
			progress_at = now_ns();
		}
		/* The window: never more than `window` datagrams queued anywhere. */
		if (sent + BATCH > r + (uint64_t)window) {
			if (now_ns() - progress_at > (uint64_t)timeout_ms * 1000000ull) {
				stalled = 1;
				break;
			}
			sched_yield();
			continue;
		}
		int n = run_count - sent < BATCH ? (int)(run_count - sent) : BATCH;
		int n4 = 0, n6 = 0;

		for (int k = 0; k < n; k++) {
			struct dest *d = &dests[idx];
			struct mmsghdr *m = d->family == 4 ? &m4[n4] : &m6[n6];
			struct iovec *io = d->family == 4 ? &iov4[n4] : &iov6[n6];
			struct payload *p = d->family == 4 ? &p4[n4++] : &p6[n6++];

			p->run = run;
			p->dest = idx;
			p->label = d->label;
			io->iov_base = p;
			io->iov_len = sizeof(*p);
			memset(m, 0, sizeof(*m));
			m->msg_hdr.msg_name = &addrs[idx];
			m->msg_hdr.msg_namelen = d->family == 4 ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
			m->msg_hdr.msg_iov = io;
			m->msg_hdr.msg_iovlen = 1;
			sent_per_dest[idx]++;
			if (++idx == ndests)
				idx = 0;
		}
		if (n4)
			send_all(sender4, m4, n4);
		if (n6)
			send_all(sender6, m6, n6);
		sent += n;
	}
	return NULL;
}

static void run_once(uint64_t count, uint64_t start, int fixed)
{
	pthread_t t;

	/* Nothing is in flight between runs (the last one waited), so resetting is safe. */
	memset(sent_per_dest, 0, ndests * sizeof(uint32_t));
	memset(recv_per_dest, 0, ndests * sizeof(uint32_t));
	atomic_store(&received, 0);
	atomic_store(&stale, 0);
	atomic_store(&garbage, 0);
	atomic_store(&misrouted, 0);
	nmismatches = 0;
	sent = send_errors = 0;
	first_send_errno = 0;
	stalled = 0;
	run_count = count;
	run_start = start;
	fixed_mode = fixed;
	atomic_store(&last_recv_ns, now_ns());
	atomic_fetch_add_explicit(&run_id, 1, memory_order_release);

	if (pthread_create(&t, NULL, sender, NULL))
		die("pthread_create");
	pthread_join(t, NULL);
	/* Wait for the rest, while it keeps coming. */
	while (atomic_load(&received) < sent) {
		if (now_ns() - atomic_load(&last_recv_ns) > (uint64_t)timeout_ms * 1000000ull)
			break;
		usleep(1000);
	}
	uint64_t got = atomic_load(&received);
	uint64_t end = got ? atomic_load(&last_recv_ns) : now_ns();
	uint64_t missing = 0;
	uint32_t missing_dests[MAX_REPORT];
	int nmissing = 0;

	for (uint32_t i = 0; i < ndests; i++) {
		if (recv_per_dest[i] < sent_per_dest[i]) {
			missing += sent_per_dest[i] - recv_per_dest[i];
			if (nmissing < MAX_REPORT)
				missing_dests[nmissing++] = i;
		}
	}
	printf("{\"run\":%u,\"sent\":%lu,\"received\":%lu,\"misrouted\":%lu,\"missing\":%lu,\"stale\":%lu,\"garbage\":%lu,"
	       "\"sendErrors\":%lu,\"firstSendError\":\"%s\",\"stalled\":%s,\"elapsedMs\":%.3f,\"missingDests\":[",
	       atomic_load(&run_id), sent, got, atomic_load(&misrouted), missing, atomic_load(&stale),
	       atomic_load(&garbage), send_errors, first_send_errno ? strerror(first_send_errno) : "",
	       stalled ? "true" : "false", (end - first_send_ns) / 1e6);
	for (int i = 0; i < nmissing; i++)
		printf("%s%u", i ? "," : "", missing_dests[i]);
	printf("],\"mismatches\":[");
	pthread_mutex_lock(&report_lock);
	for (int i = 0; i < nmismatches; i++)
		printf("%s{\"dest\":%u,\"expected\":%u,\"got\":%u,\"family\":%u}", i ? "," : "", mismatches[i].dest,
		       mismatches[i].expected, mismatches[i].got, mismatches[i].family);
	pthread_mutex_unlock(&report_lock);
	printf("]}\n");
	fflush(stdout);
}

static int sender_socket(int family)
{
	int fd = socket(family == 4 ? AF_INET : AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	union sa a = { 0 };
	int size = 32 << 20;

	if (fd < 0)
		die("socket");
	setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof(size));
	if (family == 4) {
		a.v4.sin_family = AF_INET;
		a.v4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		if (bind(fd, (struct sockaddr *)&a.v4, sizeof(a.v4)))
			die("bind sender 127.0.0.1");
	} else {
		int one = 1;

		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
		a.v6.sin6_family = AF_INET6;
		a.v6.sin6_addr = in6addr_loopback;
		if (bind(fd, (struct sockaddr *)&a.v6, sizeof(a.v6)))
			die("bind sender ::1");
	}
	return fd;
}

int main(int argc, char **argv)
{
	const char *file = NULL;
	char line[256];
	pthread_t rt;
	int ep;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (!strcmp(a, "--v4"))
			use4 = 1;
		else if (!strcmp(a, "--v6"))
			use6 = 1;
		else if (v && !strcmp(a, "--dests"))
			file = v, i++;
		else if (v && !strcmp(a, "--labels"))
			nlabels = atoi(v), i++;
		else if (v && !strcmp(a, "--window"))
			window = atol(v), i++;
		else if (v && !strcmp(a, "--timeout-ms"))
			timeout_ms = atol(v), i++;
		else if (v && !strcmp(a, "--sender-cpu"))
			sender_cpu = atoi(v), i++;
		else if (v && !strcmp(a, "--receiver-cpu"))
			receiver_cpu = atoi(v), i++;
		else {
			fprintf(stderr, "blast: unknown argument %s\n", a);
			return 2;
		}
	}
	if (!file || nlabels <= 0 || nlabels > MAX_LABELS || (!use4 && !use6) || window < 2 * BATCH) {
		fprintf(stderr, "usage: blast --dests FILE --labels N [--v4] [--v6] [--window W>=%d] [--timeout-ms T] "
				"[--sender-cpu C] [--receiver-cpu C]\n", 2 * BATCH);
		return 2;
	}
	load_dests(file);
	ep = epoll_create1(EPOLL_CLOEXEC);
	if (ep < 0)
		die("epoll_create1");
	for (int family = 4; family <= 6; family += 2) {
		if ((family == 4 && !use4) || (family == 6 && !use6))
			continue;
		for (int k = 0; k < nlabels; k++) {
			int fd = label_socket(family);
			struct epoll_event ev = { .events = EPOLLIN };

			ev.data.u64 = ((uint64_t)fd << 32) | ((uint32_t)family << 16) | (uint32_t)k;
			if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev))
				die("epoll_ctl");
			(family == 4 ? sockets4 : sockets6)[k] = fd;
		}
	}
	if (use4)
		sender4 = sender_socket(4);
	if (use6)
		sender6 = sender_socket(6);
	if (pthread_create(&rt, NULL, receiver, &ep))
		die("pthread_create");

	printf("{\"pid\":%d,\"destinations\":%u,\"v4\":[", getpid(), ndests);
	for (int k = 0; use4 && k < nlabels; k++)
		printf("%s%d", k ? "," : "", local_port(sockets4[k]));
	printf("],\"v6\":[");
	for (int k = 0; use6 && k < nlabels; k++)
		printf("%s%d", k ? "," : "", local_port(sockets6[k]));
	printf("]}\n");
	fflush(stdout);

	while (fgets(line, sizeof(line), stdin)) {
		unsigned long count, start;
		char mode[16];

		if (sscanf(line, "run %lu %lu %15s", &count, &start, mode) == 3) {
			run_once(count, start, !strcmp(mode, "fixed"));
		} else if (!strncmp(line, "quit", 4)) {
			break;
		} else {
			fprintf(stderr, "blast: unknown command %s", line);
			return 2;
		}
	}
	atomic_store(&stopping, 1);
	pthread_join(rt, NULL);
	return 0;
}
