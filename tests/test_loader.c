/* The loader accepts a good plugin and refuses, with a message naming the
 * file and the reason, every module it must not run. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loader.h"
#include "testutil.h"

static char *fixture(const char *name) {
    const char *dir = getenv("TOLK_TEST_FIXTURES");
    assert_non_null(dir);
    return xasprintf("%s/%s.so", dir, name);
}

static const loaded_plugin *load(const char *name, char *err, size_t len) {
    char *path = fixture(name);
    err[0] = 0;
    const loaded_plugin *lp = loader_open(path, err, len);
    free(path);
    return lp;
}

static void test_good_module(void **state) {
    char err[512];
    const loaded_plugin *lp = load("fx_good", err, sizeof err);
    assert_non_null(lp);
    assert_string_equal(lp->desc->name, "fx_good");
    assert_int_equal(lp->desc->kind, TOLK_KIND_MT);
}

static void test_missing_symbol(void **state) {
    char err[512];
    assert_null(load("fx_nosym", err, sizeof err));
    assert_non_null(strstr(err, "fx_nosym.so"));
    assert_non_null(strstr(err, "no symbol tolk_plugin_entry"));
}

static void test_wrong_major(void **state) {
    char err[512];
    assert_null(load("fx_major", err, sizeof err));
    assert_non_null(strstr(err, "fx_major.so"));
    char want[64];
    snprintf(want, sizeof want, "built for plugin ABI 2.%d", TOLK_ABI_MINOR);
    assert_non_null(strstr(err, want));
}

static void test_newer_minor(void **state) {
    char err[512];
    assert_null(load("fx_minor", err, sizeof err));
    assert_non_null(strstr(err, "newer than this tolkd"));
}

/* A plugin built against an older header has a shorter table: it loads,
 * and the members past its end read as absent. */
static void test_older_table_loads(void **state) {
    char err[512];
    const loaded_plugin *lp = load("fx_oldsize", err, sizeof err);
    assert_non_null(lp);
    assert_null(DESC_FN(lp->desc, tolk_stt, flush));
    assert_non_null(DESC_FN(lp->desc, tolk_stt, close));
}

static void test_missing_mandatory_member(void **state) {
    char err[512];
    assert_null(load("fx_nocancel", err, sizeof err));
    assert_non_null(strstr(err, "lacks the mandatory member 'cancel'"));
}

static void test_fingerprint_mismatch(void **state) {
    char err[512];
    assert_null(load("fx_fingerprint", err, sizeof err));
    assert_non_null(strstr(err, "build fingerprint"));
}

static void test_not_an_elf(void **state) {
    char *dir = tu_tmpdir();
    tu_write(dir, "junk.so", "this is not a shared object\n");
    char *path = xasprintf("%s/junk.so", dir);
    char err[512];
    assert_null(loader_open(path, err, sizeof err));
    assert_non_null(strstr(err, "junk.so: cannot load"));
    free(path);
    tu_rm_rf(dir);
    free(dir);
}

static void test_find_by_name(void **state) {
    char err[512];
    /* the build tree layout: DIR/NAME/.libs/NAME.so */
    const loaded_plugin *lp = loader_find("stt_mock", getenv("TOLK_PLUGIN_PATH"), err, sizeof err);
    assert_non_null(lp);
    assert_int_equal(lp->desc->kind, TOLK_KIND_STT);
    assert_null(loader_find("no_such_plugin", "/nonexistent", err, sizeof err));
    assert_non_null(strstr(err, "unknown plugin 'no_such_plugin'"));
    assert_null(loader_find("../etc/passwd", "/tmp", err, sizeof err));
    assert_non_null(strstr(err, "invalid plugin name"));
}

/* Every plugin this tree builds loads and declares a sane options table. */
static void test_every_shipped_plugin_loads(void **state) {
    static const char *const names[] = {"stt_mock", "mt_mock", "tts_mock", "transport_file",
                                        "transport_mock"};
    for (size_t i = 0; i < ARRAY_LEN(names); i++) {
        char err[512];
        const loaded_plugin *lp = loader_find(names[i], getenv("TOLK_PLUGIN_PATH"), err, sizeof err);
        if (!lp) fail_msg("%s: %s", names[i], err);
        for (const tolk_option *o = lp->desc->options; o && o->key; o++) {
            assert_non_null(o->help);
            if (o->flags & TOLK_OPT_REQUIRED) assert_null(o->default_value);
        }
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_module),
        cmocka_unit_test(test_missing_symbol),
        cmocka_unit_test(test_wrong_major),
        cmocka_unit_test(test_newer_minor),
        cmocka_unit_test(test_older_table_loads),
        cmocka_unit_test(test_missing_mandatory_member),
        cmocka_unit_test(test_fingerprint_mismatch),
        cmocka_unit_test(test_not_an_elf),
        cmocka_unit_test(test_find_by_name),
        cmocka_unit_test(test_every_shipped_plugin_loads),
    };
    int rc = cmocka_run_group_tests_name("loader", tests, NULL, NULL);
    loader_unload_all();
    return rc;
}
