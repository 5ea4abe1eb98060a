/* job.c: what an output file is the result of, kept beside it in OUTPUT.job.
 *
 * A resumed run appends to lines an earlier run wrote: that is only right
 * when the earlier run read the same input with the same options. The job
 * file records the input's identity (size, line count and a hash of its
 * bytes) and every option that changes a line's content; a rerun compares
 * before it writes anything and names what differs. */
#include "score.h"
#include "errors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* FNV-1a, 64 bits: an identity check against mistakes, not an adversary. */
static const uint64_t fnv_offset = 14695981039346656037ULL, fnv_prime = 1099511628211ULL;

int score_input_identify(const char *path, score_input_id_t *id, char *error, size_t error_size)
{
    memset(id, 0, sizeof *id);
    if (strcmp(path, "-") == 0) {
        id->known = false;
        return 0;
    }
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(error, error_size, "cannot open the input %s: %s", path, strerror(errno));
        return -1;
    }
    char buffer[1 << 16];
    uint64_t hash = fnv_offset;
    size_t n;
    int last = '\n';
    while ((n = fread(buffer, 1, sizeof buffer, f)) > 0) {
        for (size_t i = 0; i < n; i++) {
            hash = (hash ^ (unsigned char)buffer[i]) * fnv_prime;
            id->lines += buffer[i] == '\n';
        }
        id->bytes += (int64_t)n;
        last = buffer[n - 1];
    }
    const bool failed = ferror(f) != 0;
    fclose(f);
    if (failed) {
        snprintf(error, error_size, "cannot read the input %s", path);
        return -1;
    }
    id->lines += last != '\n';
    id->hash = hash;
    id->known = true;
    return 0;
}

static cJSON *job_json(const score_job_t *job)
{
    cJSON *o = cJSON_CreateObject();
    char hash[32];
    snprintf(hash, sizeof hash, "fnv1a64:%016llx", (unsigned long long)job->input.hash);
    cJSON_AddNumberToObject(o, "version", 1);
    cJSON_AddStringToObject(o, "mode", job->mode == SCORE_MODE_CLM ? "clm" : "mlm-pll");
    cJSON_AddStringToObject(o, "model", job->model ? job->model : "");
    cJSON_AddBoolToObject(o, "no_source", job->no_source);
    cJSON_AddBoolToObject(o, "token_scores", job->token_scores);
    cJSON_AddBoolToObject(o, "lang_rules", job->lang_rules);
    cJSON_AddStringToObject(o, "format", job->format == SCORE_FORMAT_TSV ? "tsv"
                                         : job->format == SCORE_FORMAT_JSONL ? "jsonl" : "auto");
    cJSON_AddStringToObject(o, "src_lang", job->src_lang ? job->src_lang : "");
    cJSON_AddStringToObject(o, "tgt_lang", job->tgt_lang ? job->tgt_lang : "");
    cJSON_AddStringToObject(o, "input", job->input_path ? job->input_path : "");
    cJSON_AddNumberToObject(o, "input_bytes", (double)job->input.bytes);
    cJSON_AddNumberToObject(o, "input_lines", (double)job->input.lines);
    cJSON_AddStringToObject(o, "input_hash", hash);
    return o;
}

/* The job as its file reads back: strings with invalid UTF-8 are written
 * repaired, and compared so. */
static cJSON *repaired_job_json(const score_job_t *job)
{
    cJSON *raw = job_json(job);
    char *printed = raw ? cJSON_PrintUnformatted(raw) : NULL;
    char *text = printed ? tools_json_repair(printed) : NULL;
    cJSON *repaired = text ? cJSON_Parse(text) : NULL;
    cJSON_free(printed);
    free(text);
    cJSON_Delete(raw);
    return repaired;
}

char *score_job_path(const char *output)
{
    size_t n = strlen(output) + sizeof ".job";
    char *path = malloc(n);
    if (path)
        snprintf(path, n, "%s.job", output);
    return path;
}

int score_job_write(const char *output, const score_job_t *job, char *error, size_t error_size)
{
    char *path = score_job_path(output);
    char *tmp = path ? malloc(strlen(path) + 5) : NULL;
    cJSON *o = job_json(job);
    char *printed = o ? cJSON_Print(o) : NULL;
    /* Paths and names may hold any bytes; the file must be JSON. */
    char *text = printed ? tools_json_repair(printed) : NULL;
    cJSON_free(printed);
    int rc = -1;
    if (!path || !tmp || !text) {
        snprintf(error, error_size, "out of memory");
        goto done;
    }
    sprintf(tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    /* Written beside and renamed: a kill leaves the old file or the new one. */
    if (!f || fprintf(f, "%s\n", text) < 0 || fflush(f) != 0 || fsync(fileno(f)) != 0) {
        snprintf(error, error_size, "cannot write %s: %s", tmp, strerror(errno));
        if (f)
            fclose(f);
        goto done;
    }
    if (fclose(f) != 0 || rename(tmp, path) != 0) {
        snprintf(error, error_size, "cannot write %s: %s", path, strerror(errno));
        goto done;
    }
    rc = 0;
done:
    free(text);
    cJSON_Delete(o);
    free(tmp);
    free(path);
    return rc;
}

/* Appends "name: was X, now Y" for each field that differs. */
static void compare_field(const cJSON *was, const cJSON *now, const char *name, char *out,
                          size_t size)
{
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(was, name);
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(now, name);
    if (a && cJSON_Compare(a, b, true))
        return;
    char *pa = a ? cJSON_PrintUnformatted(a) : NULL, *pb = b ? cJSON_PrintUnformatted(b) : NULL;
    size_t used = strlen(out);
    snprintf(out + used, size - used, "%s%s was %s, now %s", used ? "; " : "", name,
             pa ? pa : "(not recorded)", pb ? pb : "?");
    cJSON_free(pa);
    cJSON_free(pb);
}

int score_job_check(const char *output, const score_job_t *job, bool *found, char *error,
                    size_t error_size)
{
    static const char *const fields[] = {"version", "mode", "model", "no_source", "token_scores",
                                         "lang_rules", "format", "src_lang", "tgt_lang",
                                         "input_bytes", "input_lines", "input_hash"};
    char *path = score_job_path(output);
    *found = false;
    if (!path) {
        snprintf(error, error_size, "out of memory");
        return -1;
    }
    size_t size = 0;
    char *text = NULL;
    FILE *f = fopen(path, "r");
    if (!f) {
        free(path);
        return 0; /* no job file: the caller decides whether lines exist */
    }
    *found = true;
    ssize_t len = getdelim(&text, &size, '\0', f);
    fclose(f);
    cJSON *was = len > 0 ? cJSON_ParseWithLength(text, (size_t)len) : NULL;
    cJSON *now = repaired_job_json(job);
    int rc = 0;
    if (!cJSON_IsObject(was)) {
        snprintf(error, error_size, "%s is not a job file of xlm-score (remove it, or give "
                 "--force-restart to start over)", path);
        rc = -1;
    } else {
        char differs[SCORE_MESSAGE_MAX - 160] = "";
        for (size_t i = 0; i < sizeof fields / sizeof *fields; i++)
            compare_field(was, now, fields[i], differs, sizeof differs);
        if (differs[0]) {
            snprintf(error, error_size, "%s was written by a different job (%s): refusing to "
                     "resume; give --force-restart to start over", output, differs);
            rc = -1;
        }
    }
    cJSON_Delete(was);
    cJSON_Delete(now);
    free(text);
    free(path);
    return rc;
}
