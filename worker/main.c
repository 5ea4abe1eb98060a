/* xlm-worker: one rank of the MPI pipeline job (run it with mpirun). */
#include "cli.h"
#include "worker_internal.h"

#include <getopt.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

/* The program's, not the library's: worker_run only reads it. */
static atomic_int stop_requested;

static void on_signal(int sig)
{
    (void)sig;
    atomic_store(&stop_requested, 1);
}

static void usage(FILE *out)
{
    fputs("usage: mpirun -np N xlm-worker --model DIR --broker ENDPOINT [--stages S] [options]\n"
          "\n"
          "The N ranks form N/S pipelines of S stages. Stage 0 of each pipeline registers\n"
          "with the broker, takes micro-batches, tokenises text and runs the first layers;\n"
          "activations move stage to stage over MPI; the last stage computes the heads and\n"
          "sends the replies.\n"
          "\n"
          "  --model DIR             checkpoint folder (required)\n"
          "  --broker ENDPOINT       the broker's backend, e.g. tcp://127.0.0.1:5556 (required)\n"
          "  --stages S              stages per pipeline (default 1)\n"
          "  --name NAME             served model name (default: the folder's name)\n"
          "  --layer-map A,B,...     layers per stage, overriding the compute balance\n"
          "  --threads N             engine threads per rank (default 1); pins nothing: the\n"
          "                          threads run where mpirun's binding lets them, and with\n"
          "                          --bind-to core a rank gets one core, so N > 1 stacks its\n"
          "                          threads on it: give --map-by slot:PE=N --bind-to core\n"
          "                          (N cores a rank) or --bind-to none\n"
          "  --precision P           fp32 (default), bf16 or int8: the stages' weights and\n"
          "                          products (how they run is logged by each stage)\n"
          "  --credit C              micro-batches a pipeline holds (default stages + 1)\n"
          "  --max-batch-tokens T    padded tokens per micro-batch (default 4096)\n"
          "  --heartbeat-ms MS       heartbeat interval (default 500)\n"
          "  --liveness K            missed heartbeats before the broker is presumed gone (default 6)\n"
          "  --pipeline-prefix P     pipeline ids are P/pI (default NAME@HOST/jJOB, JOB: Slurm's\n"
          "                          job id, else rank 0's pid); unique per job\n"
          "  --lang-rules            tokenise with each segment's language rules\n"
          "  --projected-share F     LM checkpoints: share of positions projected onto the\n"
          "                          vocabulary, for balancing stages (default 0.5, scoring;\n"
          "                          1 for full lm logits)\n"
          "  --curve-secret FILE     CURVE: this worker's key pair (NAME.key of xlm-keygen)\n"
          "  --curve-server FILE     CURVE: the broker's public key (NAME.pub)\n"
          "  --kv-cache-generations G  generations whose key/value caches each stage keeps\n"
          "                          (default 16); beyond that the least recently stepped\n"
          "                          one is dropped and its next step recomputes the prefix\n"
          "  --no-kv-cache           every generation step recomputes the whole prefix\n"
          "                          (the reference of bench/generate.sh)\n"
          "  --log-level LEVEL       debug, info, warn or error (default info)\n"
          "  --verbose               the same as --log-level debug\n"
          "  --version               the project's and the wire protocol's versions\n",
          out);
}

static int parse_uint(const char *flag, const char *text, uint64_t lo, uint64_t hi, uint64_t *out)
{
    char *end = NULL;
    unsigned long long value = strtoull(text, &end, 10);
    if (!*text || *end || *text == '-' || value < lo || value > hi) {
        fprintf(stderr, "xlm-worker: %s %s: expected an integer %llu..%llu\n", flag, text,
                (unsigned long long)lo, (unsigned long long)hi);
        return -1;
    }
    *out = value;
    return 0;
}

static int parse_layer_map(worker_options_t *o, const char *text)
{
    char *copy = strdup(text), *save = NULL;
    int n = 0;
    for (char *part = strtok_r(copy, ",", &save); part; part = strtok_r(NULL, ",", &save)) {
        uint64_t value;
        if (n == WORKER_MAX_STAGES || parse_uint("--layer-map", part, 0, 1 << 20, &value)) {
            free(copy);
            return -1;
        }
        o->layer_counts[n++] = (int64_t)value;
    }
    free(copy);
    o->has_layer_map = true;
    return n;
}

static void default_name(worker_options_t *o)
{
    const char *dir = o->model_dir;
    size_t len = strlen(dir);
    while (len > 1 && dir[len - 1] == '/')
        len--;
    size_t start = len;
    while (start > 0 && dir[start - 1] != '/')
        start--;
    snprintf(o->name, sizeof o->name, "%.*s", (int)(len - start), dir + start);
}

/* 0 parsed, 1 done (help, version), -1 bad command line (said why). */
static int parse(int argc, char **argv, worker_options_t *o)
{
    static const struct option options[] = {
        {"model", required_argument, NULL, 'm'}, {"broker", required_argument, NULL, 'b'},
        {"stages", required_argument, NULL, 's'}, {"name", required_argument, NULL, 'n'},
        {"layer-map", required_argument, NULL, 'L'}, {"threads", required_argument, NULL, 't'},
        {"credit", required_argument, NULL, 'c'}, {"max-batch-tokens", required_argument, NULL, 'T'},
        {"heartbeat-ms", required_argument, NULL, 'H'}, {"liveness", required_argument, NULL, 'l'},
        {"pipeline-prefix", required_argument, NULL, 'P'}, {"lang-rules", no_argument, NULL, 'R'},
        {"projected-share", required_argument, NULL, 'S'},
        {"log-level", required_argument, NULL, 'g'}, {"version", no_argument, NULL, 'V'},
        {"precision", required_argument, NULL, 'p'},
        {"curve-secret", required_argument, NULL, 'k'}, {"curve-server", required_argument, NULL, 'C'},
        {"kv-cache-generations", required_argument, NULL, 'G'},
        {"no-kv-cache", no_argument, NULL, 'K'},
        {"verbose", no_argument, NULL, 'v'}, {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    int opt, map_stages = -1;
    uint64_t value;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, ":h", options, NULL)) != -1) {
        switch (opt) {
        case 'm': o->model_dir = optarg; break;
        case 'b': o->broker = optarg; break;
        case 'n':
            if (!*optarg || strlen(optarg) >= sizeof o->name) {
                fprintf(stderr, "xlm-worker: --name must be 1..%zu bytes\n", sizeof o->name - 1);
                return -1;
            }
            snprintf(o->name, sizeof o->name, "%s", optarg);
            break;
        case 's': if (parse_uint("--stages", optarg, 1, WORKER_MAX_STAGES, &value)) return -1; o->n_stages = (int)value; break;
        case 'L': if ((map_stages = parse_layer_map(o, optarg)) < 0) return -1; break;
        case 't': if (parse_uint("--threads", optarg, 1, 1024, &value)) return -1; o->threads = (int)value; break;
        case 'c': if (parse_uint("--credit", optarg, 1, PROTO_MAX_CREDIT, &value)) return -1; o->credit = (uint32_t)value; break;
        case 'T': if (parse_uint("--max-batch-tokens", optarg, 1, 1 << 24, &value)) return -1; o->max_batch_tokens = value; break;
        case 'H': if (parse_uint("--heartbeat-ms", optarg, 10, 600000, &value)) return -1; o->heartbeat_ms = (uint32_t)value; break;
        case 'l': if (parse_uint("--liveness", optarg, 2, 1000, &value)) return -1; o->liveness = (uint32_t)value; break;
        case 'P': o->pipeline_prefix = optarg; break;
        case 'k': o->curve_secret = optarg; break;
        case 'C': o->curve_server = optarg; break;
        case 'R': o->lang_rules = true; break;
        case 'G': if (parse_uint("--kv-cache-generations", optarg, 1, 4096, &value)) return -1; o->kv_cache_generations = (int)value; break;
        case 'K': o->no_kv_cache = true; break;
        case 'S': {
            char *end = NULL;
            o->projected_share = strtod(optarg, &end);
            if (!*optarg || *end || !(o->projected_share >= 0.0 && o->projected_share <= 1.0)) {
                fprintf(stderr, "xlm-worker: --projected-share %s: expected a number 0..1\n", optarg);
                return -1;
            }
            break;
        }
        case 'p':
            if ((o->precision = (int)shard_precision_parse(optarg, NULL)) == SHARD_PRECISION_COUNT_) {
                fprintf(stderr, "xlm-worker: --precision %s: expected fp32, bf16 or int8\n", optarg);
                return -1;
            }
            break;
        case 'v': o->log_level = WORKER_LOG_DEBUG; break;
        case 'g':
            if ((o->log_level = worker_log_level_from_name(optarg)) == WORKER_LOG_COUNT_) {
                fprintf(stderr, "xlm-worker: --log-level '%s', expected debug, info, warn or error\n", optarg);
                return -1;
            }
            break;
        case 'h': usage(stdout); return 1;
        case 'V': tools_print_version(stdout, "xlm-worker"); return 1;
        default: tools_bad_option(stderr, "xlm-worker", argv, opt); return -1;
        }
    }
    if (!o->model_dir || !o->broker || optind != argc) {
        fprintf(stderr, "xlm-worker: %s; see --help\n",
                optind != argc ? "unexpected argument" : "--model and --broker are required");
        return -1;
    }
    if (map_stages >= 0 && map_stages != o->n_stages) {
        fprintf(stderr, "xlm-worker: --layer-map names %d stages, --stages is %d\n", map_stages, o->n_stages);
        return -1;
    }
    if (!o->name[0])
        default_name(o);
    /* The key files are read again by each rank at set-up; reading them
     * here too turns a wrong path into one line before MPI starts. */
    worker_curve_t curve;
    worker_error_t err;
    if (worker_curve_load(o->curve_secret, o->curve_server, &curve, &err) != WORKER_OK) {
        fprintf(stderr, "xlm-worker: %s\n", err.message);
        return -1;
    }
    return 0;
}

void worker_options_default(worker_options_t *o)
{
    memset(o, 0, sizeof *o);
    o->n_stages = 1;
    o->threads = 1;
    o->max_batch_tokens = 4096;
    o->heartbeat_ms = 500;
    o->liveness = 6;
    o->projected_share = 0.5;
    o->log_level = WORKER_LOG_INFO;
    o->kv_cache_generations = 16;
}

int main(int argc, char **argv)
{
    worker_options_t options;
    worker_options_default(&options);
    int parsed = parse(argc, argv, &options);
    if (parsed)
        return parsed > 0 ? 0 : 2;
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_signal;
    sigemptyset(&action.sa_mask);
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGINT, &action, NULL);
    int provided = 0;
    /* FUNNELED: every rank has a heartbeat thread, which never calls MPI. */
    if (MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
        fprintf(stderr, "xlm-worker: MPI_Init failed\n");
        return 1;
    }
    worker_log_t log = {.rank = 0, .level = options.log_level};
    MPI_Comm_rank(MPI_COMM_WORLD, &log.rank);
    worker_status_t rc = worker_run(&options, &log, &stop_requested);
    if (rc != WORKER_OK) {
        /* One rank failing ends the job: the launcher restarts it and the
         * broker re-queues what this pipeline held. */
        worker_log(&log, WORKER_LOG_ERROR, "stopping the MPI job after an error (%s)",
                   worker_status_str(rc));
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    MPI_Finalize();
    return rc == WORKER_OK ? 0 : 1;
}
