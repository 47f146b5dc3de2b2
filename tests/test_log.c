/* Logging never blocks its caller: with standard error a full pipe that
 * nobody reads, lines beyond the writer's queue are dropped and counted,
 * and once a reader comes the count is written where the gap is. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "testutil.h"

/* Reads what the pipe holds until `needle` has been seen (NULL: until
 * nothing came for half a second) or 10 s pass. */
static int drain_until(int fd, const char *needle, char **all, size_t *len) {
    double until = mono_now() + 10;
    while (mono_now() < until) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 500) <= 0) {
            if (!needle) return 1;
            continue;
        }
        char buf[65536];
        ssize_t n = read(fd, buf, sizeof buf);
        if (n <= 0) continue;
        *all = xrealloc(*all, *len + (size_t)n + 1);
        memcpy(*all + *len, buf, (size_t)n);
        *len += (size_t)n;
        (*all)[*len] = 0;
        if (needle && strstr(*all, needle)) return 1;
    }
    return 0;
}

static void test_full_pipe_drops_and_counts(void **state) {
    int p[2];
    assert_int_equal(pipe(p), 0);
    int saved_stderr = dup(2);
    assert_true(saved_stderr >= 0);
    /* fill the pipe first: the very next write to it would block */
    int fl = fcntl(p[1], F_GETFL);
    fcntl(p[1], F_SETFL, fl | O_NONBLOCK);
    char fill[4096];
    memset(fill, '.', sizeof fill);
    while (write(p[1], fill, sizeof fill) > 0) {}
    assert_int_equal(errno, EAGAIN);
    fcntl(p[1], F_SETFL, fl);
    assert_true(dup2(p[1], 2) >= 0);

    log_open(0, "test_log");
    log_set_level(TOLK_LOG_INFO);
    /* 4 MiB of lines: more than the queue holds; a blocking write would
     * hang here (alarm ends the test then) */
    char text[1001];
    memset(text, 'x', sizeof text - 1);
    text[sizeof text - 1] = 0;
    alarm(60);
    for (int i = 0; i < 4096; i++) log_msg(TOLK_LOG_INFO, "test", "%d %s", i, text);
    alarm(0);

    /* a reader comes: the queued lines flow; the next line after the gap
     * carries the count before it */
    fcntl(p[0], F_SETFL, fcntl(p[0], F_GETFL) | O_NONBLOCK);
    char *all = NULL;
    size_t len = 0;
    assert_true(drain_until(p[0], NULL, &all, &len));
    log_msg(TOLK_LOG_INFO, "test", "after the gap");
    assert_true(drain_until(p[0], "after the gap", &all, &len));
    const char *dropped = strstr(all, "lines dropped: the log reader did not keep up");
    assert_non_null(dropped);
    assert_true(dropped < strstr(all, "after the gap"));
    /* the first lines are there, whole, and in order */
    assert_non_null(strstr(all, "[test] 0 xxx"));
    assert_true(strstr(all, "[test] 0 xxx") < strstr(all, "[test] 1 xxx"));

    log_close();
    dup2(saved_stderr, 2);
    close(saved_stderr);
    close(p[0]);
    close(p[1]);
    free(all);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_pipe_drops_and_counts),
    };
    return cmocka_run_group_tests_name("log", tests, NULL, NULL);
}
