/* xlm-score: batch translation scoring, through the service or in process. */
#include "score.h"
#include "shard_engine.h" /* shard_precision_parse */

#include "cli.h"
#include "errors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

static void usage(FILE *out)
{
    fputs("usage: xlm-score (--endpoint E [--model NAME] | --model DIR) --mode clm|mlm-pll\n"
          "                 --input FILE --output FILE [options]\n"
          "\n"
          "Scores translation pairs (src_lang, src, tgt_lang, tgt): the sequence\n"
          "<s> src </s> tgt </s>, langs by segment, positions 0..n-1.\n"
          "  clm      sum over the target tokens and the final </s> of log p(token | before)\n"
          "  mlm-pll  pseudo-log-likelihood: each target token masked in its own copy\n"
          "Output, JSON lines in input order: {\"line\": n, \"score\": s, \"n_target_tokens\": k,\n"
          "\"mean\": s/k} or {\"line\": n, \"error\": {\"code\", \"message\"}}; the job goes on.\n"
          "Killed and restarted with the same arguments, it continues after the last line\n"
          "written: the output ends with every line once, in order.\n"
          "\n"
          "  --endpoint E          score through the service (broker frontend)\n"
          "  --model NAME|DIR      with --endpoint: the served model (default: the only one);\n"
          "                        without: a checkpoint folder, scored in this process\n"
          "  --mode M              clm (causal checkpoints) or mlm-pll (masked-LM checkpoints)\n"
          "  --input FILE          TSV src_lang<TAB>src<TAB>tgt_lang<TAB>tgt, or src<TAB>tgt with\n"
          "                        --src-lang/--tgt-lang, or JSON lines with those fields; - = stdin\n"
          "  --output FILE         results (JSON lines); - = stdout (not resumable)\n"
          "  --src-lang L, --tgt-lang L   languages for two-column TSV / JSON without them\n"
          "  --format tsv|jsonl    input format (default: from the name or the first line)\n"
          "  --no-source           score <s> tgt </s> alone\n"
          "  --token-scores        add per-token scores and tokens to each line\n"
          "  --summary FILE        also score FILE (the same sources with alternative targets)\n"
          "                        and print how often the true target ranks first by mean\n"
          "  --lang-rules          in process: tokenise with each language's rules (the\n"
          "                        service uses the mode its workers were started with)\n"
          "  --threads N           in process: engine threads (default 1; pins nothing)\n"
          "  --precision P         in process: fp32 (default), bf16 or int8 products\n"
          "  --window N            through the service: requests in flight (default 512)\n"
          "  --attempt-timeout-ms MS, --attempts N   through the service: when to send a\n"
          "                        request again (default 20000 ms, 60 sends)\n"
          "  --deadline-ms MS      through the service: a pair's deadline, its time in the\n"
          "                        queue included (default 600000, the broker's maximum)\n"
          "  --curve-secret FILE   through the service, CURVE: this client's key pair\n"
          "                        (NAME.key of xlm-keygen)\n"
          "  --curve-server FILE   through the service, CURVE: the broker's public key (NAME.pub)\n"
          "  --connect-timeout-ms MS  through the service: the stats request that checks the\n"
          "                        broker and the model before the job (default 5000)\n"
          "  --max-errors N        stop once more than N lines failed in this run (default: no limit)\n"
          "  --retry-errors        first score again, in place, the lines of the output that\n"
          "                        hold a retryable error (unavailable, deadline_exceeded,\n"
          "                        overloaded, internal), then continue after the last line\n"
          "  --force-restart       start the output over instead of resuming it\n"
          "  --quiet               no progress bar and no summary line\n"
          "  --version             the program's and the wire protocol's versions\n"
          "\n"
          "Exit status: 0 every line scored; 1 the job finished and some lines hold an\n"
          "error; 2 the job could not run (usage, model, service, a resume that does not\n"
          "match): nothing written; 3 stopped before the end (--max-errors, a signal, the\n"
          "service lost, a write error, this client's CURVE key revoked): run again to\n"
          "continue.\n",
          out);
}

typedef struct {
    score_options_t score;
    const char *input, *output, *summary, *src_lang, *tgt_lang;
    score_format_t format;
    bool quiet, force_restart, retry_errors;
    int64_t max_errors; /* -1: no limit */
} cli_options_t;

static volatile sig_atomic_t interrupted = 0;

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

/* A library's message on stderr, as a user reads it (errors.h). */
static void say_error(const char *before, const char *message)
{
    char said[1024];
    tools_user_message(message, said, sizeof said);
    fprintf(stderr, "%sxlm-score: %s\n", before, said);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int parse_int(const char *flag, const char *text, long lo, long hi, long *out)
{
    char *end = NULL;
    long value = strtol(text, &end, 10);
    if (!*text || *end || value < lo || value > hi) {
        fprintf(stderr, "xlm-score: %s %s: expected an integer %ld..%ld\n", flag, text, lo, hi);
        return -1;
    }
    *out = value;
    return 0;
}

static int parse(int argc, char **argv, cli_options_t *o)
{
    static const struct option options[] = {
        {"endpoint", required_argument, NULL, 'e'}, {"model", required_argument, NULL, 'm'},
        {"mode", required_argument, NULL, 'M'}, {"input", required_argument, NULL, 'i'},
        {"output", required_argument, NULL, 'o'}, {"src-lang", required_argument, NULL, 's'},
        {"tgt-lang", required_argument, NULL, 't'}, {"format", required_argument, NULL, 'f'},
        {"no-source", no_argument, NULL, 'N'}, {"token-scores", no_argument, NULL, 'T'},
        {"summary", required_argument, NULL, 'S'}, {"lang-rules", no_argument, NULL, 'R'},
        {"threads", required_argument, NULL, 'j'}, {"window", required_argument, NULL, 'w'},
        {"precision", required_argument, NULL, 'p'},
        {"attempt-timeout-ms", required_argument, NULL, 'a'}, {"attempts", required_argument, NULL, 'A'},
        {"deadline-ms", required_argument, NULL, 'D'},
        {"connect-timeout-ms", required_argument, NULL, 'C'},
        {"max-errors", required_argument, NULL, 'X'}, {"retry-errors", no_argument, NULL, 'r'},
        {"force-restart", no_argument, NULL, 'F'}, {"version", no_argument, NULL, 'V'},
        {"quiet", no_argument, NULL, 'q'}, {"help", no_argument, NULL, 'h'},
        {"curve-secret", required_argument, NULL, 'k'}, {"curve-server", required_argument, NULL, 'c'},
        {NULL, 0, NULL, 0}};
    int opt;
    long value;
    bool mode_given = false, precision_given = false;
    o->max_errors = -1;
    opterr = 0; /* one line of our own instead of getopt's and the whole help */
    while ((opt = getopt_long(argc, argv, ":h", options, NULL)) != -1) {
        switch (opt) {
        case 'e': o->score.endpoint = optarg; break;
        case 'k': o->score.curve_secret = optarg; break;
        case 'c': o->score.curve_server = optarg; break;
        case 'm': o->score.model = optarg; break;
        case 'M':
            mode_given = true;
            if (strcmp(optarg, "clm") == 0)
                o->score.mode = SCORE_MODE_CLM;
            else if (strcmp(optarg, "mlm-pll") == 0)
                o->score.mode = SCORE_MODE_MLM_PLL;
            else {
                fprintf(stderr, "xlm-score: --mode %s: expected clm or mlm-pll\n", optarg);
                return -1;
            }
            break;
        case 'i': o->input = optarg; break;
        case 'o': o->output = optarg; break;
        case 's': o->src_lang = optarg; break;
        case 't': o->tgt_lang = optarg; break;
        case 'f':
            if (strcmp(optarg, "tsv") == 0)
                o->format = SCORE_FORMAT_TSV;
            else if (strcmp(optarg, "jsonl") == 0)
                o->format = SCORE_FORMAT_JSONL;
            else {
                fprintf(stderr, "xlm-score: --format %s: expected tsv or jsonl\n", optarg);
                return -1;
            }
            break;
        case 'N': o->score.no_source = true; break;
        case 'T': o->score.token_scores = true; break;
        case 'S': o->summary = optarg; break;
        case 'R': o->score.lang_rules = true; break;
        case 'j': if (parse_int("--threads", optarg, 1, 1024, &value)) return -1; o->score.threads = (int)value; break;
        case 'p':
            if ((o->score.precision = (int)shard_precision_parse(optarg, NULL)) ==
                SHARD_PRECISION_COUNT_) {
                fprintf(stderr, "xlm-score: --precision %s: expected fp32, bf16 or int8\n", optarg);
                return -1;
            }
            precision_given = true;
            break;
        case 'w': if (parse_int("--window", optarg, 1, 65536, &value)) return -1; o->score.window = (size_t)value; break;
        case 'a': if (parse_int("--attempt-timeout-ms", optarg, 1, 3600000, &value)) return -1; o->score.timeout_ms = (uint32_t)value; break;
        case 'A': if (parse_int("--attempts", optarg, 1, 1000, &value)) return -1; o->score.attempts = (uint32_t)value; break;
        case 'D': if (parse_int("--deadline-ms", optarg, 1, 3600000, &value)) return -1; o->score.deadline_ms = (uint32_t)value; break;
        case 'C': if (parse_int("--connect-timeout-ms", optarg, 1, 3600000, &value)) return -1; o->score.connect_timeout_ms = (uint32_t)value; break;
        case 'X': if (parse_int("--max-errors", optarg, 0, LONG_MAX, &value)) return -1; o->max_errors = value; break;
        case 'r': o->retry_errors = true; break;
        case 'F': o->force_restart = true; break;
        case 'q': o->quiet = true; break;
        case 'V': tools_print_version(stdout, "xlm-score"); exit(0);
        case 'h': usage(stdout); exit(0);
        default: tools_bad_option(stderr, "xlm-score", argv, opt); return -1;
        }
    }
    const char *missing = !mode_given ? "--mode" : !o->input ? "--input" : !o->output ? "--output"
                          : (!o->score.endpoint && !o->score.model) ? "--endpoint or --model" : NULL;
    if (missing || optind != argc) {
        if (missing)
            fprintf(stderr, "xlm-score: %s is required; see --help\n", missing);
        else
            fprintf(stderr, "xlm-score: unexpected argument '%s'; see --help\n", argv[optind]);
        return -1;
    }
    if (precision_given && o->score.endpoint) {
        fprintf(stderr, "xlm-score: --precision is for --model DIR in process; through the "
                        "service the workers' --precision holds\n");
        return -1;
    }
    if (o->retry_errors && strcmp(o->output, "-") == 0) {
        fprintf(stderr, "xlm-score: --retry-errors rewrites the output file: it needs --output FILE\n");
        return -1;
    }
    if (o->score.window == 0)
        o->score.window = 512;
    if (o->score.deadline_ms == 0)
        o->score.deadline_ms = 600000;
    return 0;
}

/* ------------------------------------------------------------ progress */

enum { PROGRESS_CODES = 16 };

/* What the bar and the closing line say. Counts cover the whole output:
 * lines of earlier runs (resumed) are counted when the job starts. */
typedef struct {
    bool show;
    const char *label;  /* "" for the main pass */
    double start, last_draw;
    int64_t total_lines; /* -1: unknown (stdin) */
    int64_t resumed;     /* lines written by earlier runs, in lines */
    int64_t lines, errors, scored;
    int64_t run_lines, run_errors, run_target_tokens; /* this run, for the rates */
    double score_sum;
    struct { char code[SCORE_CODE_MAX]; int64_t n; } codes[PROGRESS_CODES];
    size_t n_codes;
} progress_t;

static void tally(progress_t *p, bool ok, const char *code, double score, bool this_run,
                  int64_t target_tokens)
{
    p->lines++;
    p->run_lines += this_run;
    if (ok) {
        p->scored++;
        p->score_sum += score;
        if (this_run)
            p->run_target_tokens += target_tokens;
        return;
    }
    p->errors++;
    p->run_errors += this_run;
    size_t i = 0;
    while (i < p->n_codes && strcmp(p->codes[i].code, code) != 0)
        i++;
    if (i == p->n_codes && p->n_codes < PROGRESS_CODES)
        snprintf(p->codes[p->n_codes++].code, SCORE_CODE_MAX, "%s", code);
    if (i < p->n_codes)
        p->codes[i].n++;
}

static void draw(progress_t *p, bool final)
{
    double t = now();
    if (!p->show || (!final && t - p->last_draw < 0.2))
        return;
    p->last_draw = t;
    double elapsed = t - p->start > 1e-9 ? t - p->start : 1e-9;
    double rate = (double)p->run_lines / elapsed;
    char total[48] = "", eta[48] = "";
    if (p->total_lines >= 0) {
        snprintf(total, sizeof total, "/%lld", (long long)p->total_lines);
        if (rate > 0) {
            double left = (double)(p->total_lines - p->lines) / rate;
            snprintf(eta, sizeof eta, "  ETA %dm%02ds", (int)(left / 60), (int)fmod(left, 60));
        }
    }
    fprintf(stderr, "\r%s%lld%s lines  %.0f lines/s  %.0f target tokens/s%s  errors %lld%s",
            p->label, (long long)p->lines, total, rate, (double)p->run_target_tokens / elapsed, eta,
            (long long)p->errors, final ? "\n" : "   ");
}

/* "bad_request 2, too_large 1" */
static void format_codes(const progress_t *p, char *out, size_t size)
{
    size_t used = 0;
    out[0] = '\0';
    for (size_t i = 0; i < p->n_codes && used < size; i++)
        used += (size_t)snprintf(out + used, size - used, "%s%s %lld", i ? ", " : "",
                                 p->codes[i].code, (long long)p->codes[i].n);
}

static void print_summary(const progress_t *p, const char *what)
{
    double elapsed = now() - p->start;
    if (elapsed <= 0)
        elapsed = 1e-9;
    char codes[512], resumed[64] = "";
    format_codes(p, codes, sizeof codes);
    if (p->resumed)
        snprintf(resumed, sizeof resumed, ", %lld resumed from earlier runs", (long long)p->resumed);
    fprintf(stderr, "xlm-score: %s%lld lines (%lld scored, %lld errors%s%s%s) in %.2f s: %.1f "
            "lines/s, %.0f target tokens/s, mean score %.4f\n",
            what, (long long)p->lines, (long long)p->scored, (long long)p->errors,
            codes[0] ? ": " : "", codes, resumed, elapsed, (double)p->run_lines / elapsed,
            (double)p->run_target_tokens / elapsed, p->scored ? p->score_sum / (double)p->scored : 0.0);
}

/* ------------------------------------------------------------ the stream */

/* Results waiting for their turn: slot line % capacity. */
typedef struct {
    score_result_t *slots;
    bool *filled;
    size_t capacity;
} reorder_t;

typedef int (*on_result_fn)(void *ctx, const score_result_t *result);

/* A pass over the input: lines after done, those want() accepts (NULL:
 * all), reach on_result in line order. */
typedef struct {
    const char *input;
    int64_t done;
    bool (*want)(void *ctx, int64_t line);
    on_result_fn on_result;
    void *ctx;
    progress_t *progress;
    int64_t max_errors; /* -1: no limit */
    score_mode_t mode;
} pass_t;

/* Codes that say the job is misconfigured, not the line: the first pair
 * the service answers with one of them stops the job before any line. */
static bool job_level_code(const char *code)
{
    return strcmp(code, "unknown_model") == 0 || strcmp(code, "unknown_task") == 0 ||
           strcmp(code, "bad_version") == 0;
}

static bool wanted(const pass_t *pass, int64_t line)
{
    return line > pass->done && (!pass->want || pass->want(pass->ctx, line));
}

/* Hands on the results that are next in line order. probe_line, when set,
 * holds everything back until that line's result says the job can run. */
static int deliver(const pass_t *pass, reorder_t *ro, int64_t *next, int64_t read_up_to,
                   int64_t *probe_line)
{
    const int64_t window = (int64_t)ro->capacity;
    if (*probe_line) {
        size_t at = (size_t)(*probe_line % window);
        if (!ro->filled[at])
            return 0;
        const score_result_t *r = &ro->slots[at];
        if (!r->ok && job_level_code(r->code)) {
            const bool task = strcmp(r->code, "unknown_task") == 0;
            char said[SCORE_MESSAGE_MAX];
            tools_user_message(r->message, said, sizeof said);
            fprintf(stderr, "xlm-score: the service refused the job: %s (%s)%s\n", said,
                    r->code, !task ? ""
                    : pass->mode == SCORE_MODE_MLM_PLL ? "; --mode mlm-pll needs a masked LM: a causal LM is scored with --mode clm"
                                                       : "; --mode clm needs a causal LM: a masked LM is scored with --mode mlm-pll");
            return SCORE_EXIT_CANNOT_RUN;
        }
        *probe_line = 0;
    }
    for (;;) {
        while (*next <= read_up_to && !wanted(pass, *next))
            (*next)++;
        size_t at = (size_t)(*next % window);
        if (!ro->filled[at])
            return 0;
        score_result_t *r = &ro->slots[at];
        if (!r->ok && strcmp(r->code, "permission_denied") == 0) {
            /* Every line after would get it too: stop before this one,
             * which a run with an allowed key resumes from. */
            char said[SCORE_MESSAGE_MAX];
            tools_user_message(r->message, said, sizeof said);
            fprintf(stderr, "\nxlm-score: stopping before line %lld: %s (permission_denied); "
                    "run again with an allowed key to continue\n", (long long)*next, said);
            return SCORE_EXIT_STOPPED;
        }
        int rc = pass->on_result(pass->ctx, r) ? SCORE_EXIT_STOPPED : 0;
        tally(pass->progress, r->ok, r->code, r->score, true, r->n_target_tokens);
        score_result_clear(r);
        ro->filled[at] = false;
        (*next)++;
        if (rc)
            return rc;
        if (pass->max_errors >= 0 && pass->progress->run_errors > pass->max_errors) {
            fprintf(stderr, "\nxlm-score: stopping after line %lld: %lld lines failed in this run, "
                    "more than --max-errors %lld; run again to continue\n", (long long)*next - 1,
                    (long long)pass->progress->run_errors, (long long)pass->max_errors);
            return SCORE_EXIT_STOPPED;
        }
    }
}

/* Streams the wanted pairs of the input through the backend: 0, or an exit
 * status. */
static int run_stream(score_backend_t *backend, const cli_options_t *o, const pass_t *pass)
{
    char error[512];
    score_reader_t *reader = score_reader_open(pass->input, o->format, o->src_lang, o->tgt_lang,
                                               error, sizeof error);
    if (!reader) {
        fprintf(stderr, "xlm-score: %s\n", error);
        return SCORE_EXIT_CANNOT_RUN;
    }
    /* Results wait here for their turn: room for every line in flight. */
    const size_t window = 2 * backend->max_pending + 256;
    reorder_t ro = {calloc(window, sizeof(score_result_t)), calloc(window, sizeof(bool)), window};
    int rc = ro.slots && ro.filled ? 0 : SCORE_EXIT_STOPPED;
    int64_t next = pass->done + 1, read_up_to = pass->done, probe_line = 0;
    bool exhausted = false, probing = backend->probe_first;
    while (rc == 0 && !interrupted) {
        /* Keep the window full: lines in flight stay in [next, next + window);
         * while the first pair is the probe, nothing else goes. */
        while (!exhausted && !(probing && probe_line) && read_up_to + 1 < next + (int64_t)window &&
               backend->pending(backend) < backend->max_pending) {
            score_pair_t pair;
            int got = score_reader_next(reader, &pair);
            if (got < 0) {
                fprintf(stderr, "xlm-score: error reading %s\n", pass->input);
                rc = SCORE_EXIT_STOPPED;
                break;
            }
            if (got == 0) {
                exhausted = true;
                break;
            }
            read_up_to = pair.line;
            if (!wanted(pass, pair.line)) { /* written by an earlier run, or not retried */
                score_pair_clear(&pair);
                continue;
            }
            if (probing && !pair.error_code[0])
                probe_line = pair.line;
            if (backend->submit(backend, &pair) != 0) {
                say_error("", backend->error);
                score_pair_clear(&pair);
                rc = SCORE_EXIT_STOPPED;
            }
        }
        if (rc)
            break;
        while (next <= read_up_to && !wanted(pass, next))
            next++;
        if (exhausted && next > read_up_to)
            break;
        score_result_t result;
        int got = backend->collect(backend, &result, 100, exhausted || probe_line);
        if (got < 0) {
            say_error("\n", backend->error);
            rc = SCORE_EXIT_STOPPED;
            break;
        }
        if (got == 0 && exhausted && backend->pending(backend) == 0 && next <= read_up_to) {
            fprintf(stderr, "xlm-score: line %lld was lost\n", (long long)next);
            rc = SCORE_EXIT_STOPPED;
            break;
        }
        if (got > 0) {
            size_t at = (size_t)(result.line % (int64_t)window);
            if (result.line < next || result.line >= next + (int64_t)window || ro.filled[at]) {
                fprintf(stderr, "xlm-score: result for line %lld out of the window\n", (long long)result.line);
                score_result_clear(&result);
                rc = SCORE_EXIT_STOPPED;
                break;
            }
            ro.slots[at] = result;
            ro.filled[at] = true;
        }
        const bool was_probing = probe_line != 0;
        rc = deliver(pass, &ro, &next, read_up_to, &probe_line);
        if (was_probing && !probe_line)
            probing = false;
        draw(pass->progress, false);
    }
    if (interrupted && rc == 0) {
        fprintf(stderr, "\nxlm-score: interrupted after line %lld; run again to continue\n",
                (long long)next - 1);
        rc = SCORE_EXIT_STOPPED;
    }
    for (size_t i = 0; ro.slots && i < window; i++)
        if (ro.filled[i])
            score_result_clear(&ro.slots[i]);
    free(ro.slots);
    free(ro.filled);
    score_reader_destroy(&reader);
    return rc;
}

/* ------------------------------------------------------------ writing */

typedef struct {
    score_output_t *out;
    bool token_scores;
    double *means; /* by line, for --summary (NULL without) */
    size_t n_means, cap_means;
    bool keep_means;
    double last_flush;
} writer_t;

static int keep_mean(writer_t *w, int64_t line, double mean)
{
    if (!w->keep_means)
        return 0;
    /* --summary compares by line: one double per line, the only state that
     * grows with the input. */
    if ((size_t)line > w->cap_means) {
        size_t capacity = w->cap_means ? w->cap_means : 1024;
        while (capacity < (size_t)line)
            capacity *= 2;
        double *grown = realloc(w->means, capacity * sizeof *grown);
        if (!grown)
            return -1;
        for (size_t i = w->cap_means; i < capacity; i++)
            grown[i] = NAN;
        w->means = grown;
        w->cap_means = capacity;
    }
    w->means[line - 1] = mean;
    w->n_means = (size_t)line > w->n_means ? (size_t)line : w->n_means;
    return 0;
}

static void maybe_flush(writer_t *w)
{
    double t = now();
    if (t - w->last_flush > 0.5) { /* what a kill can lose is recomputed on restart */
        w->last_flush = t;
        score_output_flush(w->out);
    }
}

static int write_result(void *ctx, const score_result_t *r)
{
    writer_t *w = ctx;
    if (w->out && score_output_write(w->out, r, w->token_scores) != 0) {
        fprintf(stderr, "xlm-score: cannot write the output: %s\n", strerror(errno));
        return -1;
    }
    if (w->out)
        maybe_flush(w);
    return keep_mean(w, r->line, r->ok && r->n_target_tokens ? r->score / (double)r->n_target_tokens : NAN);
}

/* Lines already in an output (a resumed run): counted, and their means kept
 * for --summary. */
static int read_existing(const char *path, int64_t done, writer_t *w, progress_t *p)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    char *line = NULL;
    size_t capacity = 0;
    ssize_t len;
    for (int64_t n = 1; n <= done && (len = getline(&line, &capacity, f)) > 0; n++) {
        cJSON *o = cJSON_ParseWithLength(line, (size_t)len);
        const cJSON *error = cJSON_GetObjectItemCaseSensitive(o, "error");
        const cJSON *code = cJSON_GetObjectItemCaseSensitive(error, "code");
        const cJSON *score = cJSON_GetObjectItemCaseSensitive(o, "score");
        const cJSON *mean = cJSON_GetObjectItemCaseSensitive(o, "mean");
        tally(p, !error, cJSON_IsString(code) ? code->valuestring : "unknown",
              cJSON_IsNumber(score) ? score->valuedouble : 0.0, false, 0);
        keep_mean(w, n, cJSON_IsNumber(mean) ? mean->valuedouble : NAN);
        cJSON_Delete(o);
    }
    p->resumed = p->lines;
    free(line);
    fclose(f);
    return 0;
}

/* ------------------------------------------------------------ resuming */

/* An output of this job: checked against its job file (or started over),
 * then opened; *done lines of it are already there. */
typedef struct {
    const char *path; /* "-": standard output, not resumable */
    char *job_path;
    score_output_t *out;
    int64_t done;
    bool created; /* by this run: removed again if the job cannot start */
} output_t;

static int open_output(output_t *o, const char *path, const score_job_t *job, bool force)
{
    char error[1024];
    o->path = path;
    if (strcmp(path, "-") != 0) {
        o->job_path = score_job_path(path);
        if (!o->job_path)
            return -1;
        if (force) {
            unlink(path);
            unlink(o->job_path);
        }
        char *retry = malloc(strlen(path) + sizeof ".retry");
        if (retry && force) {
            sprintf(retry, "%s.retry", path);
            unlink(retry);
        }
        free(retry);
        struct stat st;
        const bool exists = stat(path, &st) == 0, has_lines = exists && st.st_size > 0;
        o->created = !exists;
        bool found = false;
        /* Only lines to resume make the job file matter: without, it is
         * written again for this job. */
        if (has_lines && score_job_check(path, job, &found, error, sizeof error) != 0) {
            fprintf(stderr, "xlm-score: %s\n", error);
            return -1;
        }
        if (!found && has_lines) {
            fprintf(stderr, "xlm-score: %s has results but no %s to say which job wrote them: "
                    "refusing to resume; give --force-restart to start over\n", path, o->job_path);
            return -1;
        }
        if (found && !job->input.known) {
            fprintf(stderr, "xlm-score: cannot resume %s: the input is standard input, whose "
                    "identity cannot be checked; give the input as a file, or --force-restart\n", path);
            return -1;
        }
        if (!found && score_job_write(path, job, error, sizeof error) != 0) {
            fprintf(stderr, "xlm-score: %s\n", error);
            return -1;
        }
    }
    o->out = score_output_open(path, &o->done, error, sizeof error);
    if (!o->out) {
        fprintf(stderr, "xlm-score: %s\n", error);
        return -1;
    }
    return 0;
}

/* The job did not start: no output of it stays behind. */
static void discard_output(output_t *o)
{
    score_output_close(&o->out);
    if (o->created && o->job_path) {
        unlink(o->path);
        unlink(o->job_path);
    }
}

/* ------------------------------------------------------------ --retry-errors */

static bool retryable(const char *code)
{
    static const char *const codes[] = {"unavailable", "deadline_exceeded", "overloaded", "internal"};
    for (size_t i = 0; i < sizeof codes / sizeof *codes; i++)
        if (strcmp(code, codes[i]) == 0)
            return true;
    return false;
}

/* The output merged into OUTPUT.retry: old lines copied, retried lines
 * replaced, in order; renamed over the output when complete. A kill leaves
 * the output as it was and OUTPUT.retry resumable. */
typedef struct {
    writer_t w;
    FILE *old;
    int64_t old_at, n_lines, n_retry;
    uint8_t *retry; /* one bit per line: holds a retryable error */
    char *line;
    size_t capacity;
} retry_t;

static bool retry_want(void *ctx, int64_t line)
{
    const retry_t *r = ctx;
    return line <= r->n_lines && (r->retry[(line - 1) / 8] >> ((line - 1) % 8) & 1);
}

/* Reads the old output up to line upto, copying the lines when copy. */
static int old_until(retry_t *r, int64_t upto, bool copy)
{
    while (r->old_at < upto) {
        ssize_t len = getline(&r->line, &r->capacity, r->old);
        if (len <= 0)
            return -1;
        r->old_at++;
        if (copy && score_output_write_raw(r->w.out, r->line, (size_t)len) != 0)
            return -1;
    }
    return 0;
}

static int retry_result(void *ctx, const score_result_t *res)
{
    retry_t *r = ctx;
    if (old_until(r, res->line - 1, true) != 0 || old_until(r, res->line, false) != 0) {
        fprintf(stderr, "xlm-score: cannot merge the retried line %lld: %s\n",
                (long long)res->line, strerror(errno));
        return -1;
    }
    return write_result(&r->w, res);
}

/* Marks the lines of the output that hold a retryable error. */
static int find_retryable(const char *path, retry_t *r)
{
    FILE *f = fopen(path, "r");
    r->retry = calloc((size_t)r->n_lines / 8 + 1, 1);
    if (!f || !r->retry) {
        if (f)
            fclose(f);
        return -1;
    }
    ssize_t len;
    for (int64_t n = 1; n <= r->n_lines && (len = getline(&r->line, &r->capacity, f)) > 0; n++) {
        cJSON *o = cJSON_ParseWithLength(r->line, (size_t)len);
        const cJSON *code = cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(o, "error"), "code");
        if (cJSON_IsString(code) && retryable(code->valuestring)) {
            r->retry[(n - 1) / 8] |= (uint8_t)(1u << ((n - 1) % 8));
            r->n_retry++;
        }
        cJSON_Delete(o);
    }
    fclose(f);
    return 0;
}

static int retry_pass(score_backend_t *backend, const cli_options_t *o, const output_t *main_out)
{
    retry_t r = {.w = {.token_scores = o->score.token_scores}, .n_lines = main_out->done};
    char *tmp = malloc(strlen(main_out->path) + sizeof ".retry");
    int rc = SCORE_EXIT_STOPPED;
    char error[1024];
    if (!tmp || find_retryable(main_out->path, &r) != 0) {
        fprintf(stderr, "xlm-score: cannot read %s: %s\n", main_out->path, strerror(errno));
        goto done;
    }
    sprintf(tmp, "%s.retry", main_out->path);
    struct stat st;
    if (r.n_retry == 0 && stat(tmp, &st) != 0) {
        rc = 0;
        goto done;
    }
    int64_t merged = 0;
    if (!(r.w.out = score_output_open(tmp, &merged, error, sizeof error)) ||
        !(r.old = fopen(main_out->path, "r")) || old_until(&r, merged, false) != 0) {
        fprintf(stderr, "xlm-score: %s\n", r.w.out ? "cannot read the output again" : error);
        goto done;
    }
    progress_t p = {.show = !o->quiet && isatty(2), .label = "retry: ", .start = now(),
                    .total_lines = r.n_retry};
    for (int64_t n = 1; n <= merged; n++)
        p.lines += retry_want(&r, n);
    p.resumed = p.lines;
    if (!o->quiet)
        fprintf(stderr, "xlm-score: retrying %lld lines with a retryable error%s\n",
                (long long)(r.n_retry - p.lines), merged ? " (resuming an interrupted retry)" : "");
    pass_t pass = {.input = o->input, .done = merged, .want = retry_want, .on_result = retry_result,
                   .ctx = &r, .progress = &p, .max_errors = o->max_errors, .mode = o->score.mode};
    rc = run_stream(backend, o, &pass);
    draw(&p, true);
    if (rc == 0 && old_until(&r, r.n_lines, true) != 0) {
        fprintf(stderr, "xlm-score: cannot copy %s: %s\n", main_out->path, strerror(errno));
        rc = SCORE_EXIT_STOPPED;
    }
    if (score_output_close(&r.w.out) != 0 && rc == 0)
        rc = SCORE_EXIT_STOPPED;
    if (rc == 0 && rename(tmp, main_out->path) != 0) {
        fprintf(stderr, "xlm-score: cannot rename %s to %s: %s\n", tmp, main_out->path, strerror(errno));
        rc = SCORE_EXIT_STOPPED;
    }
    if (rc == 0 && !o->quiet)
        print_summary(&p, "retried: ");
done:
    score_output_close(&r.w.out);
    if (r.old)
        fclose(r.old);
    free(r.retry);
    free(r.line);
    free(tmp);
    return rc;
}

/* ------------------------------------------------------------ main */

static score_job_t job_of(const cli_options_t *o, const score_backend_t *backend,
                          const char *input, const score_input_id_t *id)
{
    return (score_job_t){.mode = o->score.mode, .model = backend->model_name,
                         .no_source = o->score.no_source, .token_scores = o->score.token_scores,
                         .lang_rules = o->score.lang_rules, .format = o->format,
                         .src_lang = o->src_lang, .tgt_lang = o->tgt_lang, .input_path = input,
                         .input = *id};
}

static bool show_progress(const cli_options_t *o)
{
    /* On one terminal the bar would share lines with results on stdout. */
    return !o->quiet && isatty(2) && !(strcmp(o->output, "-") == 0 && isatty(1));
}

/* One pass (the main one or --summary's) over input into out. */
static int score_pass(score_backend_t *backend, const cli_options_t *o, const char *input,
                      output_t *out, writer_t *w, const score_input_id_t *id, const char *label)
{
    progress_t p = {.show = show_progress(o), .label = label, .start = now(),
                    .total_lines = id->known ? id->lines : -1};
    w->out = out->out;
    if (out->done && read_existing(out->path, out->done, w, &p) != 0) {
        fprintf(stderr, "xlm-score: cannot read %s again: %s\n", out->path, strerror(errno));
        return SCORE_EXIT_STOPPED;
    }
    if (out->done && !o->quiet)
        fprintf(stderr, "xlm-score: %sresuming after line %lld of %s\n", label,
                (long long)out->done, out->path);
    pass_t pass = {.input = input, .done = out->done, .on_result = write_result, .ctx = w,
                   .progress = &p, .max_errors = o->max_errors, .mode = o->score.mode};
    int rc = id->known && out->done >= id->lines ? 0 : run_stream(backend, o, &pass);
    if (score_output_close(&out->out) != 0 && rc == 0) {
        fprintf(stderr, "xlm-score: cannot write the output: %s\n", strerror(errno));
        rc = SCORE_EXIT_STOPPED;
    }
    w->out = NULL;
    draw(&p, true);
    if (rc == SCORE_EXIT_CANNOT_RUN && p.lines == 0)
        discard_output(out);
    if (rc != SCORE_EXIT_CANNOT_RUN && !o->quiet)
        print_summary(&p, label);
    return rc ? rc : p.errors ? SCORE_EXIT_LINE_ERRORS : SCORE_EXIT_OK;
}

/* --summary FILE: checked before the main pass, so that a wrong file does
 * not cost a whole pass first. */
static int check_summary(const cli_options_t *o, const score_input_id_t *input,
                         score_input_id_t *summary)
{
    char error[1024];
    if (score_input_identify(o->summary, summary, error, sizeof error) != 0 || !summary->known) {
        fprintf(stderr, "xlm-score: --summary: %s\n",
                summary->known ? error : "the alternative targets must be a file");
        return -1;
    }
    if (input->known && summary->lines != input->lines) {
        fprintf(stderr, "xlm-score: --summary %s has %lld lines, the input %s has %lld: the "
                "alternatives must pair with the input line by line\n", o->summary,
                (long long)summary->lines, o->input, (long long)input->lines);
        return -1;
    }
    return 0;
}

static void print_ranking(const cli_options_t *o, const writer_t *m, const writer_t *alt)
{
    int64_t compared = 0, wins = 0;
    for (size_t i = 0; i < m->n_means && i < alt->n_means; i++)
        if (!isnan(m->means[i]) && !isnan(alt->means[i])) {
            compared++;
            wins += m->means[i] > alt->means[i];
        }
    FILE *report = strcmp(o->output, "-") == 0 ? stderr : stdout;
    fprintf(report, "ranking accuracy by mean: %.3f (%lld of %lld pairs score their true target "
            "above the alternative of %s)\n", compared ? (double)wins / (double)compared : 0.0,
            (long long)wins, (long long)compared, o->summary);
}

static char *summary_output_path(const char *output)
{
    if (strcmp(output, "-") == 0)
        return NULL;
    char *path = malloc(strlen(output) + sizeof ".summary.jsonl");
    if (path)
        sprintf(path, "%s.summary.jsonl", output);
    return path;
}

static int run_job(score_backend_t *backend, const cli_options_t *o)
{
    char error[1024];
    score_input_id_t input = {0}, summary = {0};
    if (score_input_identify(o->input, &input, error, sizeof error) != 0) {
        fprintf(stderr, "xlm-score: %s\n", error);
        return SCORE_EXIT_CANNOT_RUN;
    }
    if (o->summary && check_summary(o, &input, &summary) != 0)
        return SCORE_EXIT_CANNOT_RUN;
    score_job_t job = job_of(o, backend, o->input, &input);
    output_t main_out = {0}, alt_out = {0};
    char *alt_path = o->summary ? summary_output_path(o->output) : NULL;
    score_job_t alt_job = job_of(o, backend, o->summary, &summary);
    /* The alternatives' scores belong to the main output: a fresh one starts them over. */
    if (open_output(&main_out, o->output, &job, o->force_restart) != 0 ||
        (alt_path && open_output(&alt_out, alt_path, &alt_job,
                                 o->force_restart || main_out.done == 0) != 0)) {
        discard_output(&main_out);
        free(main_out.job_path);
        free(alt_path);
        return SCORE_EXIT_CANNOT_RUN;
    }
    writer_t m = {.token_scores = o->score.token_scores, .keep_means = o->summary != NULL};
    writer_t alt = {.token_scores = o->score.token_scores, .keep_means = true};
    int rc = 0;
    if (o->retry_errors && main_out.done) {
        score_output_close(&main_out.out); /* rewritten beside, then reopened */
        rc = retry_pass(backend, o, &main_out);
        char reopen_error[1024];
        if (rc == 0 && !(main_out.out = score_output_open(o->output, &main_out.done, reopen_error,
                                                          sizeof reopen_error))) {
            fprintf(stderr, "xlm-score: %s\n", reopen_error);
            rc = SCORE_EXIT_STOPPED;
        }
    }
    if (rc == 0)
        rc = score_pass(backend, o, o->input, &main_out, &m, &input, "");
    int alt_rc = 0;
    if (o->summary && (rc == SCORE_EXIT_OK || rc == SCORE_EXIT_LINE_ERRORS)) {
        /* Without a file to keep them in (--output -), the alternatives are kept in memory. */
        output_t memory = {.path = "-"};
        alt_rc = score_pass(backend, o, o->summary, alt_path ? &alt_out : &memory, &alt, &summary,
                            "summary: ");
        if (alt_rc == SCORE_EXIT_OK || alt_rc == SCORE_EXIT_LINE_ERRORS)
            print_ranking(o, &m, &alt);
        rc = alt_rc > rc ? alt_rc : rc;
    }
    if (rc == SCORE_EXIT_CANNOT_RUN)
        discard_output(&alt_out);
    score_output_close(&main_out.out);
    score_output_close(&alt_out.out);
    free(main_out.job_path);
    free(alt_out.job_path);
    free(alt_path);
    free(m.means);
    free(alt.means);
    return rc;
}

int main(int argc, char **argv)
{
    cli_options_t o = {0};
    if (parse(argc, argv, &o))
        return SCORE_EXIT_CANNOT_RUN;
    struct sigaction action = {0};
    action.sa_handler = on_signal;
    sigaction(SIGINT, &action, NULL);
    sigaction(SIGTERM, &action, NULL);
    char error[1024];
    score_backend_t *backend = o.score.endpoint ? score_backend_service(&o.score, error, sizeof error)
                                                : score_backend_local(&o.score, error, sizeof error);
    if (!backend) {
        say_error("", error);
        return SCORE_EXIT_CANNOT_RUN;
    }
    int rc = run_job(backend, &o);
    backend->destroy(backend);
    return rc;
}
