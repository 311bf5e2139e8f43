/* stamp LEDGER KIND: appends ONE line to LEDGER with one write(2) on an O_APPEND descriptor:
 *   KIND HOST CHAIN TASK PID MONO_NS
 * KIND is S (a run starts), T (a tick), E (a run ends); HOST is $RC_HOST, CHAIN and TASK are
 * $RUN_CHAIN_NAME and $RUN_CHAIN_TASK (run-chain sets them), PID is the caller's (the task
 * shell's: our parent), MONO_NS is CLOCK_MONOTONIC in nanoseconds (one clock for every network
 * namespace of the machine). Used by the fleet tests' ledger (tests/support/ledger.rs). */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static const char *env_or(const char *name, const char *dflt) {
    const char *v = getenv(name);
    return v && *v ? v : dflt;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: stamp LEDGER S|T|E\n");
        return 2;
    }
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) return 1;
    char line[512];
    int n = snprintf(line, sizeof line, "%s %s %s %s %ld %lld\n", argv[2], env_or("RC_HOST", "-"),
                     env_or("RUN_CHAIN_NAME", "-"), env_or("RUN_CHAIN_TASK", "-"), (long)getppid(),
                     (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
    if (n <= 0 || n >= (int)sizeof line) return 1;
    int fd = open(argv[1], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        perror(argv[1]);
        return 1;
    }
    if (write(fd, line, (size_t)n) != n) {
        perror("write");
        return 1;
    }
    return close(fd) == 0 ? 0 : 1;
}
