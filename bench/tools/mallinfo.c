/* Preloaded into a server (LD_PRELOAD) by bench/waiting.py --mallinfo: every
 * 0.2 s writes glibc's heap figures (mallinfo2) to $MALLINFO_OUT, so that
 * RSS can be split into live heap, free heap kept by malloc, and mmapped
 * blocks. Build: gcc -O2 -shared -fPIC -o mallinfo.so mallinfo.c -lpthread */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
static void *run(void *arg) {
    const char *path = getenv("MALLINFO_OUT");
    for (;;) {
        usleep(200000);
        struct mallinfo2 m = mallinfo2();
        FILE *f = fopen(path, "w");
        if (f) { fprintf(f, "in_use %zu free %zu mmapped %zu arena %zu\n", m.uordblks, m.fordblks, m.hblkhd, m.arena); fclose(f); }
    }
    return 0;
}
__attribute__((constructor)) static void start(void) {
    if (!getenv("MALLINFO_OUT")) return;
    pthread_t t; pthread_create(&t, 0, run, 0); pthread_detach(t);
}
