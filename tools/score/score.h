/* score.h (internal to xlm-score): pairs in, scores out.
 *
 *   reader (TSV / JSONL, line numbers) -> backend (the service, or the engine
 *   in process) -> results in any order -> output (input order, resumable)
 */
#ifndef XLM_SCORE_H
#define XLM_SCORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

enum { SCORE_LANG_MAX = 16, SCORE_CODE_MAX = 32, SCORE_MESSAGE_MAX = 512 };

typedef enum { SCORE_MODE_CLM = 0, SCORE_MODE_MLM_PLL = 1 } score_mode_t;

/* One input pair. A line that could not be read as a pair carries an error
 * instead (and is answered with an error line). */
typedef struct {
    int64_t line; /* 1-based line of the input file */
    char src_lang[SCORE_LANG_MAX], tgt_lang[SCORE_LANG_MAX];
    char *src, *tgt; /* owned, NUL-terminated */
    char error_code[SCORE_CODE_MAX];
    char error_message[SCORE_MESSAGE_MAX];
} score_pair_t;

void score_pair_clear(score_pair_t *pair);

/* One finished pair. */
typedef struct {
    int64_t line;
    bool ok;
    char code[SCORE_CODE_MAX];
    char message[SCORE_MESSAGE_MAX];
    double score; /* sum of the float32 token log-probabilities, in double */
    int64_t n_target_tokens;
    int64_t tokens_bytes; /* length of the pair's text, for tokens/s */
    int64_t n_tokens;     /* tokens of the scored sequence */
    float *token_scores;  /* [n_target_tokens] when asked for, owned */
    char **tokens;        /* [n_target_tokens] when asked for and known, owned */
} score_result_t;

void score_result_clear(score_result_t *result);
void score_result_error(score_result_t *result, int64_t line, const char *code,
                        const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* ------------------------------------------------------------ input */

typedef enum { SCORE_FORMAT_AUTO = 0, SCORE_FORMAT_TSV, SCORE_FORMAT_JSONL } score_format_t;

typedef struct score_reader score_reader_t;

/* path "-" reads standard input. src_lang / tgt_lang (may be NULL) fill
 * two-column TSV and JSONL lines without languages. */
score_reader_t *score_reader_open(const char *path, score_format_t format, const char *src_lang,
                                  const char *tgt_lang, char *error, size_t error_size);
/* 1: *pair filled (maybe with an error), 0: end of input, -1: read error. */
int score_reader_next(score_reader_t *reader, score_pair_t *pair);
void score_reader_destroy(score_reader_t **self_p);

/* ------------------------------------------------------------ output */

typedef struct score_output score_output_t;

/* Opens path ("-": standard output) for the results. An existing file is
 * resumed: a partial last line (a run killed while writing) is cut off and
 * *done gets the number of complete lines, which must be lines 1..*done of
 * this input. */
score_output_t *score_output_open(const char *path, int64_t *done, char *error,
                                  size_t error_size);
/* Writes the result line of a result (lines must come in order). */
int score_output_write(score_output_t *out, const score_result_t *result, bool token_scores);
/* Writes a line as it is (one complete line, newline included). */
int score_output_write_raw(score_output_t *out, const char *line, size_t length);
/* Flushes to the file (and to disk on close). */
int score_output_flush(score_output_t *out);
int score_output_close(score_output_t **self_p);

/* ------------------------------------------------------------ backends */

typedef struct score_backend score_backend_t;

struct score_backend {
    /* Takes the pair (its strings move into the backend). 0 or -1. */
    int (*submit)(score_backend_t *self, score_pair_t *pair);
    /* A finished result: 1, 0 when none finished within timeout_ms, -1 on a
     * fatal error (message in error). flush: compute what is buffered. */
    int (*collect)(score_backend_t *self, score_result_t *result, int timeout_ms, bool flush);
    /* Pairs submitted and not collected. */
    size_t (*pending)(score_backend_t *self);
    void (*destroy)(score_backend_t *self);
    size_t max_pending; /* submit only while pending() is below it */
    /* The model's identity for the job file: the folder in process, the
     * served name through the service. */
    char model_name[256];
    /* Through the service the model's checks run there: the first pair's
     * reply is awaited before the others go (a refused task stops the job). */
    bool probe_first;
    char error[SCORE_MESSAGE_MAX];
};

typedef struct {
    score_mode_t mode;
    bool no_source;
    bool token_scores;
    bool lang_rules;    /* local: tokenizer mode */
    int threads;        /* local */
    int precision;      /* local: a shard_precision_t (0: fp32) */
    const char *model;  /* local: checkpoint folder; service: model name (may be NULL) */
    const char *endpoint; /* service */
    const char *curve_secret, *curve_server; /* service: CURVE key files, NULL: plain */
    size_t window;      /* service: requests in flight */
    uint32_t timeout_ms; /* service: per attempt */
    uint32_t attempts;  /* service */
    uint32_t deadline_ms; /* service: per request, queueing included */
    uint32_t connect_timeout_ms; /* service: the stats request before the job */
} score_options_t;

/* ------------------------------------------------------------ the job
 *
 * Exit statuses of xlm-score (and of xlm-infer and xlm-client infer). */
enum {
    SCORE_EXIT_OK = 0,          /* every line has a result */
    SCORE_EXIT_LINE_ERRORS = 1, /* the job finished; some lines hold an error */
    SCORE_EXIT_CANNOT_RUN = 2,  /* usage, configuration, service or resume check: nothing written */
    SCORE_EXIT_STOPPED = 3      /* stopped before the end (--max-errors, a signal, a lost
                                   service, a write error): run again to continue */
};

/* The input's identity: what a resumed run must read again. */
typedef struct {
    bool known; /* false for standard input */
    int64_t bytes, lines;
    uint64_t hash; /* FNV-1a 64 of every byte */
} score_input_id_t;

int score_input_identify(const char *path, score_input_id_t *id, char *error, size_t error_size);

/* Every option that changes what a line of the output holds. */
typedef struct {
    score_mode_t mode;
    const char *model; /* in process: the folder; service: the served name */
    bool no_source, token_scores, lang_rules;
    score_format_t format;
    const char *src_lang, *tgt_lang, *input_path;
    score_input_id_t input;
} score_job_t;

/* OUTPUT.job (malloc'd). */
char *score_job_path(const char *output);
/* Writes OUTPUT.job atomically. */
int score_job_write(const char *output, const score_job_t *job, char *error, size_t error_size);
/* Compares OUTPUT.job, when there is one (*found), with job: -1 and what
 * differs in error when they do not match. */
int score_job_check(const char *output, const score_job_t *job, bool *found, char *error,
                    size_t error_size);

score_backend_t *score_backend_local(const score_options_t *options, char *error, size_t size);
score_backend_t *score_backend_service(const score_options_t *options, char *error, size_t size);

#endif
