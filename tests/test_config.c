/* conf.d errors come out as FILE:LINE: message, one per problem, and a
 * good directory loads. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conf.h"
#include "testutil.h"

typedef struct fx {
    char *dir;
    conf_errors errs;
} fx;

static int setup(void **state) {
    fx *f = xcalloc(1, sizeof *f);
    f->dir = tu_tmpdir();
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fx *f = *state;
    tu_rm_rf(f->dir);
    free(f->dir);
    conf_errors_free(&f->errs);
    free(f);
    return 0;
}

static conf_set *load(fx *f) { return conf_load_dir(f->dir, NULL, &f->errs); }

/* Asserts that some error reads "DIR/FILE:LINE: ...NEEDLE...". */
static void expect_error(fx *f, const char *file, int line, const char *needle) {
    char *prefix = xasprintf("%s/%s:%d: ", f->dir, file, line);
    for (size_t i = 0; i < f->errs.msgs.n; i++) {
        const char *m = f->errs.msgs.v[i];
        if (!strncmp(m, prefix, strlen(prefix)) && strstr(m, needle)) {
            free(prefix);
            return;
        }
    }
    for (size_t i = 0; i < f->errs.msgs.n; i++) fprintf(stderr, "  got: %s\n", (char *)f->errs.msgs.v[i]);
    fail_msg("no error \"%s...%s\"", prefix, needle);
}

static void test_good_directory(void **state) {
    fx *f = *state;
    tu_write(f->dir, "tolk.conf", "core: { max_channels = 7; workers = 1; };\n"
                                  "defaults: { mode = \"unidirectional\"; caller_language = \"de\"; };\n"
                                  "endpoints = ( { name = \"alice\"; language = \"en\"; } );\n");
    tu_write_mock_pipeline(f->dir);
    conf_set *cs = load(f);
    assert_int_equal(f->errs.msgs.n, 0);
    assert_non_null(cs);
    assert_int_equal(cs->core.max_channels, 7);
    assert_int_equal(cs->defaults.mode, TOLK_MODE_UNIDIRECTIONAL);
    assert_string_equal(cs->defaults.caller_language, "de");
    assert_string_equal(cs->defaults.callee_language, "es"); /* default kept */
    assert_int_equal(cs->instances.n, 3);
    assert_int_equal(cs->chains.n, 3);
    /* defaults of the plugin's table are filled in */
    const conf_instance *ci = conf_find_instance(cs, "tts-a");
    assert_non_null(ci);
    assert_non_null(json_object_get(ci->settings, "chunk_ms"));
    conf_free(cs);
}

static void test_shipped_conf_d_loads(void **state) {
    fx *f = *state;
    char *dir = xasprintf("%s/conf.d", getenv("top_srcdir"));
    conf_set *cs = conf_load_dir(dir, NULL, &f->errs);
    for (size_t i = 0; i < f->errs.msgs.n; i++) fprintf(stderr, "%s\n", (char *)f->errs.msgs.v[i]);
    assert_non_null(cs);
    conf_free(cs);
    free(dir);
}

static void test_syntax_error(void **state) {
    fx *f = *state;
    tu_write(f->dir, "tolk.conf", "core: {\n  max_channels = 10;\n  workers = = 2;\n};\n");
    assert_null(load(f));
    expect_error(f, "tolk.conf", 3, "syntax error");
}

static void test_unknown_top_level_key(void **state) {
    fx *f = *state;
    tu_write(f->dir, "tolk.conf", "core: { };\n\nfrobnicate = 3;\n");
    assert_null(load(f));
    expect_error(f, "tolk.conf", 3, "unknown top-level key 'frobnicate'");
}

static void test_unknown_key_in_core(void **state) {
    fx *f = *state;
    tu_write(f->dir, "tolk.conf", "core: {\n  max_channels = 10;\n  max_chanels = 11;\n};\n");
    assert_null(load(f));
    expect_error(f, "tolk.conf", 3, "unknown key 'max_chanels' in core");
}

static void test_wrong_type(void **state) {
    fx *f = *state;
    tu_write(f->dir, "tolk.conf", "core: {\n  max_channels = \"ten\";\n};\n");
    assert_null(load(f));
    expect_error(f, "tolk.conf", 2, "'max_channels' in core must be an integer, not a string");
}

static void test_out_of_range(void **state) {
    fx *f = *state;
    tu_write(f->dir, "tolk.conf", "core: {\n\n  workers = 0;\n};\n");
    assert_null(load(f));
    expect_error(f, "tolk.conf", 3, "'workers' in core is 0, outside 1..256");
}

/* The bound on a call's unfinished audio (tolk.conf(5)): 30 s unless set,
 * and at least 1 s, since a smaller one would refuse every phrase. */
static void test_max_backlog_seconds(void **state) {
    fx *f = *state;
    tu_write(f->dir, "tolk.conf", "core: { workers = 1; };\n");
    conf_set *cs = load(f);
    assert_non_null(cs);
    assert_true(cs->core.max_backlog_seconds == 30.0);
    conf_free(cs);
    tu_write(f->dir, "tolk.conf", "core: {\n  max_backlog_seconds = 0.5;\n};\n");
    assert_null(load(f));
    expect_error(f, "tolk.conf", 2, "'max_backlog_seconds' in core is 0.5, outside 1..3600");
}

static void test_bad_enum_values(void **state) {
    fx *f = *state;
    tu_write(f->dir, "tolk.conf", "core: { log_level = \"loud\"; };\ndefaults: {\n mode = \"sideways\"; };\n");
    assert_null(load(f));
    expect_error(f, "tolk.conf", 1, "log_level 'loud'");
    expect_error(f, "tolk.conf", 3, "mode 'sideways'");
}

static void test_missing_required_setting(void **state) {
    fx *f = *state;
    tu_write(f->dir, "10-x.conf", "\ninstance: {\n  name = \"x\";\n};\n");
    assert_null(load(f));
    expect_error(f, "10-x.conf", 2, "missing required setting 'plugin' in instance");
}

static void test_unknown_plugin(void **state) {
    fx *f = *state;
    tu_write(f->dir, "10-x.conf", "instance: { name = \"x\"; plugin = \"stt_nonesuch\"; };\n");
    assert_null(load(f));
    expect_error(f, "10-x.conf", 1, "unknown plugin 'stt_nonesuch'");
}

static void test_plugin_setting_errors(void **state) {
    fx *f = *state;
    tu_write(f->dir, "20-stt.conf",
             "instance: {\n"
             "  name = \"stt\";\n"
             "  plugin = \"stt_mock\";\n"
             "  settings: {\n"
             "    silence_ms = \"long\";\n"
             "    phrasez = [ \"a\" ];\n"
             "  };\n"
             "};\n");
    assert_null(load(f));
    expect_error(f, "20-stt.conf", 5, "'silence_ms' in settings of instance 'stt' (plugin stt_mock) must be an integer");
    expect_error(f, "20-stt.conf", 6, "unknown key 'phrasez'");
}

/* The plugin's own check_config() complaint lands on its key's line. */
static void test_plugin_check_config_line(void **state) {
    fx *f = *state;
    tu_write(f->dir, "60-file.conf",
             "instance: {\n"
             "  name = \"file\";\n"
             "  plugin = \"transport_file\";\n"
             "  settings: {\n"
             "    output = \"/tmp/out.wav\";\n"
             "    input = \"/nonexistent/in.wav\";\n"
             "  };\n"
             "};\n");
    assert_null(load(f));
    expect_error(f, "60-file.conf", 6, "input");
}

static void test_chain_errors(void **state) {
    fx *f = *state;
    tu_write_mock_pipeline(f->dir);
    tu_write(f->dir, "60-chains.conf",
             "chains = (\n"
             "  { name = \"x\"; kind = \"stt\"; providers = [ \"nobody\" ]; },\n"
             "  { name = \"y\"; kind = \"stt\"; providers = [ \"mt-a\" ]; },\n"
             "  { name = \"z\"; kind = \"sst\"; providers = [ \"stt-a\" ]; }\n"
             ");\n");
    assert_null(load(f));
    expect_error(f, "60-chains.conf", 2, "chain 'x' names unknown instance 'nobody'");
    expect_error(f, "60-chains.conf", 3, "instance 'mt-a' is a mt plugin");
    expect_error(f, "60-chains.conf", 4, "chain kind 'sst'");
}

static void test_duplicate_names(void **state) {
    fx *f = *state;
    tu_write_mock_pipeline(f->dir);
    tu_write(f->dir, "70-dup.conf", "\n\ninstance: { name = \"stt-a\"; plugin = \"stt_mock\"; };\n");
    assert_null(load(f));
    expect_error(f, "70-dup.conf", 3, "duplicate instance 'stt-a' (first defined at");
}

/* Every file's errors are reported, not just the first. */
static void test_all_errors_reported(void **state) {
    fx *f = *state;
    tu_write(f->dir, "a.conf", "core: { workers = -1; };\n");
    tu_write(f->dir, "b.conf", "bogus = 1;\n");
    tu_write(f->dir, "c.conf", "endpoints = ( { name = \"e\"; } );\n");
    tu_write(f->dir, "ignored.txt", "not a conf file at all {{{\n");
    assert_null(load(f));
    assert_int_equal(f->errs.msgs.n, 3);
    expect_error(f, "c.conf", 1, "missing required setting 'language' in endpoint");
}

static void test_empty_directory(void **state) {
    fx *f = *state;
    assert_null(load(f));
    assert_non_null(strstr(f->errs.msgs.v[0], "no *.conf files"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_good_directory, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shipped_conf_d_loads, setup, teardown),
        cmocka_unit_test_setup_teardown(test_syntax_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_top_level_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_key_in_core, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrong_type, setup, teardown),
        cmocka_unit_test_setup_teardown(test_out_of_range, setup, teardown),
        cmocka_unit_test_setup_teardown(test_max_backlog_seconds, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_enum_values, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_required_setting, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_plugin, setup, teardown),
        cmocka_unit_test_setup_teardown(test_plugin_setting_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_plugin_check_config_line, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chain_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_duplicate_names, setup, teardown),
        cmocka_unit_test_setup_teardown(test_all_errors_reported, setup, teardown),
        cmocka_unit_test_setup_teardown(test_empty_directory, setup, teardown),
    };
    int rc = cmocka_run_group_tests_name("config", tests, NULL, NULL);
    loader_unload_all();
    return rc;
}
