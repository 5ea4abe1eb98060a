/* xlm-score: batch translation scoring, through the service or in process. */
#include "score.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
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
          "  --threads N           in process: BLAS threads (default 1)\n"
          "  --window N            through the service: requests in flight (default 512)\n"
          "  --attempt-timeout-ms MS, --attempts N   through the service: when to send a\n"
          "                        request again (default 20000 ms, 60 sends)\n"
          "  --deadline-ms MS      through the service: a pair's deadline, its time in the\n"
          "                        queue included (default 600000, the broker's maximum)\n"
          "  --quiet               no progress bar and no summary line\n",
          out);
}

typedef struct {
    score_options_t score;
    const char *input, *output, *summary, *src_lang, *tgt_lang;
    score_format_t format;
    bool quiet;
} cli_options_t;

static volatile sig_atomic_t interrupted = 0;

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
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
        {"attempt-timeout-ms", required_argument, NULL, 'a'}, {"attempts", required_argument, NULL, 'A'},
        {"deadline-ms", required_argument, NULL, 'D'},
        {"quiet", no_argument, NULL, 'q'}, {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    int opt;
    long value;
    bool mode_given = false;
    while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        switch (opt) {
        case 'e': o->score.endpoint = optarg; break;
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
        case 'w': if (parse_int("--window", optarg, 1, 65536, &value)) return -1; o->score.window = (size_t)value; break;
        case 'a': if (parse_int("--attempt-timeout-ms", optarg, 1, 3600000, &value)) return -1; o->score.timeout_ms = (uint32_t)value; break;
        case 'A': if (parse_int("--attempts", optarg, 1, 1000, &value)) return -1; o->score.attempts = (uint32_t)value; break;
        case 'D': if (parse_int("--deadline-ms", optarg, 1, 3600000, &value)) return -1; o->score.deadline_ms = (uint32_t)value; break;
        case 'q': o->quiet = true; break;
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); return -1;
        }
    }
    const char *missing = !mode_given ? "--mode" : !o->input ? "--input" : !o->output ? "--output"
                          : (!o->score.endpoint && !o->score.model) ? "--endpoint or --model" : NULL;
    if (missing || optind != argc) {
        fprintf(stderr, "xlm-score: %s\n", missing ? "missing option" : "unexpected argument");
        if (missing)
            fprintf(stderr, "xlm-score: %s is required\n", missing);
        usage(stderr);
        return -1;
    }
    if (o->score.window == 0)
        o->score.window = 512;
    if (o->score.deadline_ms == 0)
        o->score.deadline_ms = 600000;
    return 0;
}

/* ------------------------------------------------------------ progress */

typedef struct {
    bool show;
    double start, last_draw;
    int64_t total_lines; /* -1: unknown (stdin) */
    int64_t lines, errors, target_tokens, tokens;
    double score_sum;
} progress_t;

static int64_t count_lines(const char *path)
{
    if (strcmp(path, "-") == 0)
        return -1;
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    char buffer[1 << 16];
    int64_t lines = 0;
    size_t n;
    int last = '\n';
    while ((n = fread(buffer, 1, sizeof buffer, f)) > 0) {
        for (size_t i = 0; i < n; i++)
            lines += buffer[i] == '\n';
        last = buffer[n - 1];
    }
    fclose(f);
    return lines + (last != '\n');
}

static void draw(progress_t *p, bool final)
{
    double t = now();
    if (!p->show || (!final && t - p->last_draw < 0.2))
        return;
    p->last_draw = t;
    double elapsed = t - p->start > 1e-9 ? t - p->start : 1e-9;
    double rate = (double)p->lines / elapsed;
    char eta[32] = "?";
    if (p->total_lines >= 0 && rate > 0) {
        double left = (double)(p->total_lines - p->lines) / rate;
        snprintf(eta, sizeof eta, "%dm%02ds", (int)(left / 60), (int)fmod(left, 60));
    }
    fprintf(stderr, "\r%lld/%lld lines  %.0f lines/s  %.0f tokens/s  ETA %s  errors %lld%s",
            (long long)p->lines, (long long)(p->total_lines >= 0 ? p->total_lines : p->lines), rate,
            (double)p->tokens / elapsed, eta, (long long)p->errors, final ? "\n" : "   ");
}

/* ------------------------------------------------------------ the job */

/* Results waiting for their turn: slot line % capacity. */
typedef struct {
    score_result_t *slots;
    bool *filled;
    size_t capacity;
} reorder_t;

typedef int (*on_result_fn)(void *ctx, const score_result_t *result);

/* Streams every pair of input through the backend; results reach on_result
 * in line order, from line done + 1. */
static int run_stream(score_backend_t *backend, const cli_options_t *o, const char *input,
                      int64_t done, on_result_fn on_result, void *ctx, progress_t *progress)
{
    char error[512];
    score_reader_t *reader = score_reader_open(input, o->format, o->src_lang, o->tgt_lang, error,
                                               sizeof error);
    if (!reader) {
        fprintf(stderr, "xlm-score: %s\n", error);
        return -1;
    }
    /* Results wait here for their turn: room for every line in flight. */
    const size_t window = 2 * backend->max_pending + 256;
    reorder_t ro = {calloc(window, sizeof(score_result_t)), calloc(window, sizeof(bool)), window};
    int rc = ro.slots && ro.filled ? 0 : -1;
    int64_t next = done + 1, read_up_to = 0;
    bool exhausted = false;
    while (rc == 0 && !interrupted) {
        /* Keep the window full: lines in flight stay in [next, next + window). */
        while (!exhausted && read_up_to + 1 < next + (int64_t)window &&
               backend->pending(backend) < backend->max_pending) {
            score_pair_t pair;
            int got = score_reader_next(reader, &pair);
            if (got < 0) {
                fprintf(stderr, "xlm-score: error reading %s\n", input);
                rc = -1;
                break;
            }
            if (got == 0) {
                exhausted = true;
                break;
            }
            read_up_to = pair.line;
            if (pair.line <= done) { /* written by an earlier run */
                score_pair_clear(&pair);
                continue;
            }
            if (backend->submit(backend, &pair) != 0) {
                fprintf(stderr, "xlm-score: %s\n", backend->error);
                score_pair_clear(&pair);
                rc = -1;
            }
        }
        if (rc || (exhausted && next > read_up_to))
            break;
        score_result_t result;
        int got = backend->collect(backend, &result, 100, exhausted);
        if (got < 0) {
            fprintf(stderr, "xlm-score: %s\n", backend->error);
            rc = -1;
            break;
        }
        if (got == 0 && exhausted && backend->pending(backend) == 0 && next <= read_up_to) {
            fprintf(stderr, "xlm-score: line %lld was lost\n", (long long)next);
            rc = -1;
            break;
        }
        if (got > 0) {
            size_t at = (size_t)(result.line % (int64_t)window);
            if (result.line < next || result.line >= next + (int64_t)window || ro.filled[at]) {
                fprintf(stderr, "xlm-score: result for line %lld out of the window\n", (long long)result.line);
                score_result_clear(&result);
                rc = -1;
                break;
            }
            ro.slots[at] = result;
            ro.filled[at] = true;
        }
        for (size_t at = (size_t)(next % (int64_t)window); rc == 0 && ro.filled[at];
             at = (size_t)(next % (int64_t)window)) {
            score_result_t *r = &ro.slots[at];
            rc = on_result(ctx, r);
            progress->lines++;
            progress->errors += !r->ok;
            if (r->ok) {
                progress->target_tokens += r->n_target_tokens;
                progress->tokens += r->n_tokens;
                progress->score_sum += r->score;
            }
            score_result_clear(r);
            ro.filled[at] = false;
            next++;
        }
        draw(progress, false);
    }
    if (interrupted && rc == 0) {
        fprintf(stderr, "\nxlm-score: interrupted after line %lld; run again to continue\n",
                (long long)next - 1);
        rc = -1;
    }
    for (size_t i = 0; ro.slots && i < window; i++)
        if (ro.filled[i])
            score_result_clear(&ro.slots[i]);
    free(ro.slots);
    free(ro.filled);
    score_reader_destroy(&reader);
    return rc;
}

typedef struct {
    score_output_t *out;
    bool token_scores;
    bool keep_means; /* --summary */
    double *means;   /* by line, for --summary */
    size_t n_means, cap_means;
    double last_flush;
} main_ctx_t;

static int keep_mean(double **means, size_t *n, size_t *cap, int64_t line, double mean)
{
    if ((size_t)line > *cap) {
        size_t capacity = *cap ? *cap : 1024;
        while (capacity < (size_t)line)
            capacity *= 2;
        double *grown = realloc(*means, capacity * sizeof *grown);
        if (!grown)
            return -1;
        for (size_t i = *cap; i < capacity; i++)
            grown[i] = NAN;
        *means = grown;
        *cap = capacity;
    }
    (*means)[line - 1] = mean;
    *n = (size_t)line > *n ? (size_t)line : *n;
    return 0;
}

static int write_result(void *ctx, const score_result_t *r)
{
    main_ctx_t *m = ctx;
    if (score_output_write(m->out, r, m->token_scores) != 0) {
        fprintf(stderr, "xlm-score: cannot write the output: %s\n", strerror(errno));
        return -1;
    }
    double t = now();
    if (t - m->last_flush > 0.5) { /* what a kill can lose is recomputed on restart */
        m->last_flush = t;
        score_output_flush(m->out);
    }
    if (!m->keep_means)
        return 0;
    /* --summary compares by line: one double per line, the only state that
     * grows with the input. */
    return keep_mean(&m->means, &m->n_means, &m->cap_means, r->line,
                     r->ok && r->n_target_tokens ? r->score / (double)r->n_target_tokens : NAN);
}

typedef struct {
    double *means;
    size_t n_means, cap_means;
} alt_ctx_t;

static int keep_alt(void *ctx, const score_result_t *r)
{
    alt_ctx_t *a = ctx;
    return keep_mean(&a->means, &a->n_means, &a->cap_means, r->line,
                     r->ok && r->n_target_tokens ? r->score / (double)r->n_target_tokens : NAN);
}

/* Means of lines already in the output (a resumed run), for --summary. */
static int read_existing_means(const char *path, main_ctx_t *m, int64_t done)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    char *line = NULL;
    size_t capacity = 0;
    int64_t n = 0;
    while (n < done && getline(&line, &capacity, f) > 0) {
        n++;
        const char *mean = strstr(line, "\"mean\":");
        keep_mean(&m->means, &m->n_means, &m->cap_means, n, mean ? strtod(mean + 7, NULL) : NAN);
    }
    free(line);
    fclose(f);
    return 0;
}

int main(int argc, char **argv)
{
    cli_options_t o = {0};
    if (parse(argc, argv, &o))
        return 2;
    struct sigaction action = {0};
    action.sa_handler = on_signal;
    sigaction(SIGINT, &action, NULL);
    sigaction(SIGTERM, &action, NULL);
    char error[512];
    score_backend_t *backend = o.score.endpoint ? score_backend_service(&o.score, error, sizeof error)
                                                : score_backend_local(&o.score, error, sizeof error);
    if (!backend) {
        fprintf(stderr, "xlm-score: %s\n", error);
        return 1;
    }
    int64_t done = 0;
    main_ctx_t m = {.token_scores = o.score.token_scores, .keep_means = o.summary != NULL};
    m.out = score_output_open(o.output, &done, error, sizeof error);
    if (!m.out) {
        fprintf(stderr, "xlm-score: %s\n", error);
        backend->destroy(backend);
        return 1;
    }
    if (done && o.summary)
        read_existing_means(o.output, &m, done);
    progress_t progress = {.show = !o.quiet && isatty(2), .start = now(),
                           .total_lines = count_lines(o.input)};
    if (progress.total_lines >= 0)
        progress.total_lines -= done;
    if (done && !o.quiet)
        fprintf(stderr, "xlm-score: resuming after line %lld of %s\n", (long long)done, o.output);
    int rc = run_stream(backend, &o, o.input, done, write_result, &m, &progress);
    if (score_output_close(&m.out) != 0 && rc == 0) {
        fprintf(stderr, "xlm-score: cannot write the output: %s\n", strerror(errno));
        rc = -1;
    }
    draw(&progress, true);
    double elapsed = now() - progress.start;
    if (rc == 0 && !o.quiet)
        fprintf(stderr, "xlm-score: %lld lines (%lld scored, %lld errors) in %.2f s: %.1f lines/s, "
                        "%.0f target tokens/s, mean score %.4f\n",
                (long long)progress.lines, (long long)(progress.lines - progress.errors),
                (long long)progress.errors, elapsed, (double)progress.lines / (elapsed > 0 ? elapsed : 1),
                (double)progress.target_tokens / (elapsed > 0 ? elapsed : 1),
                progress.lines > progress.errors ? progress.score_sum / (double)(progress.lines - progress.errors) : 0.0);
    if (rc == 0 && o.summary) {
        alt_ctx_t alt = {0};
        progress_t alt_progress = {.show = false, .start = now(), .total_lines = -1};
        rc = run_stream(backend, &o, o.summary, 0, keep_alt, &alt, &alt_progress);
        int64_t compared = 0, wins = 0;
        for (size_t i = 0; rc == 0 && i < m.n_means && i < alt.n_means; i++)
            if (!isnan(m.means[i]) && !isnan(alt.means[i])) {
                compared++;
                wins += m.means[i] > alt.means[i];
            }
        FILE *report = strcmp(o.output, "-") == 0 ? stderr : stdout;
        if (rc == 0)
            fprintf(report, "ranking accuracy by mean: %.3f (%lld of %lld pairs score their true target "
                   "above the alternative of %s)\n",
                   compared ? (double)wins / (double)compared : 0.0, (long long)wins,
                   (long long)compared, o.summary);
        free(alt.means);
    }
    free(m.means);
    backend->destroy(backend);
    return rc == 0 ? 0 : 1;
}
