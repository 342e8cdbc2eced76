/* syscall-probe NR [ARG...]: makes system call NR with up to six integer arguments and prints the
 * errno it failed with, or 0. Built static by the tests, so it runs in any image. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long a[6] = {0};
    if (argc < 2 || argc > 8) {
        fprintf(stderr, "usage: syscall-probe NR [ARG...]\n");
        return 2;
    }
    for (int i = 2; i < argc; i++)
        a[i - 2] = strtol(argv[i], NULL, 0);
    long r = syscall(strtol(argv[1], NULL, 0), a[0], a[1], a[2], a[3], a[4], a[5]);
    printf("%d\n", r < 0 ? errno : 0);
    return 0;
}
