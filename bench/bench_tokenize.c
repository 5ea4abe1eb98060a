/* bench-tokenize: throughput of the XLM tokenizer on one core, on a few MB of
 * mixed-language text (English, French, German, Romanian sentences with
 * punctuation, numbers, quotes and accents, recombined at random so that the
 * words repeat as they do in real text). The reference measured in the same
 * run is a plain UTF-8 pass over the same bytes (decode and split on
 * spaces), the least any tokenizer has to do.
 *
 * Usage: bench-tokenize [--model DIR] [--mb N] [--mode hf|lang_rules|both]
 * One line per mode:
 *   mode=hf mb=... sentences=... mb_per_s=... sentences_per_s=... target_mb_per_s=5
 *   ratio_to_target=... scan_mb_per_s=...  */
#include "shard_tokenizer.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct {
    const char *lang;
    const char *text;
} sample_t;

static const sample_t samples[] = {
    {"en", "The quick brown fox jumps over the lazy dog, doesn't it?"},
    {"en", "Dr. Smith paid $3,500.75 for 12 items (about 291.73 each) on Jan. 5th."},
    {"en", "\"Hello,\" she said... \"it's a beautiful day in the U.S. of A.\""},
    {"en", "Visit https://example.org/path?q=1 or mail info@example.org for details!"},
    {"en", "The committee's report -- released yesterday -- wasn't well received."},
    {"fr", "L'été dernier, nous sommes allés à la plage près de Saint-Malo."},
    {"fr", "« Bonjour ! » a-t-il dit ; puis il est reparti vers l'hôtel."},
    {"fr", "Le prix est de 1 250,50 euros, soit une hausse de 3,5 % en un an."},
    {"fr", "Qu'est-ce que c'est ? Aujourd'hui, c'est l'anniversaire de Noël."},
    {"de", "Die Straße war über 2.000 Meter lang und führte zum Bahnhof."},
    {"de", "Können Sie mir bitte sagen, wie spät es ist? Danke schön!"},
    {"de", "Größere Änderungen werden z.B. erst im nächsten Jahr erwartet."},
    {"ro", "Această țară are o istorie bogată și o cultură fascinantă."},
    {"ro", "Școala începe în septembrie; elevii își pregătesc cărțile."},
    {"ro", "Şedinţa a durat până la ora 18:30, după care s-a încheiat."},
};
enum { N_SAMPLES = sizeof samples / sizeof samples[0] };

typedef struct {
    char *text;
    size_t *start, *len;
    const char **lang;
    size_t n, bytes;
} corpus_t;

static uint64_t rng = 0x243F6A8885A308D3ull;

static uint64_t next_random(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* Sentences made of the words of a sample and of other samples of the same
 * language, shuffled: realistic word repetition, no two sentences alike. */
static int build_corpus(corpus_t *c, size_t target_bytes)
{
    size_t cap_sent = target_bytes / 20 + 16;
    c->text = malloc(target_bytes + 4096);
    c->start = malloc(cap_sent * sizeof *c->start);
    c->len = malloc(cap_sent * sizeof *c->len);
    c->lang = malloc(cap_sent * sizeof *c->lang);
    if (!c->text || !c->start || !c->len || !c->lang)
        return -1;
    c->n = c->bytes = 0;
    while (c->bytes < target_bytes && c->n < cap_sent) {
        const sample_t *s = &samples[next_random() % N_SAMPLES];
        size_t o = c->bytes;
        c->start[c->n] = o;
        c->lang[c->n] = s->lang;
        size_t words = 6 + next_random() % 14;
        for (size_t w = 0; w < words && o < target_bytes + 3000; w++) {
            const sample_t *t = s;
            for (int tries = 0; tries < 4; tries++) {
                const sample_t *u = &samples[next_random() % N_SAMPLES];
                if (strcmp(u->lang, s->lang) == 0) {
                    t = u;
                    break;
                }
            }
            /* the k-th space-separated word of t */
            size_t nwords = 1;
            for (const char *p = t->text; *p; p++)
                nwords += *p == ' ';
            size_t k = next_random() % nwords;
            const char *p = t->text;
            while (k && *p)
                if (*p++ == ' ')
                    k--;
            const char *e = strchr(p, ' ');
            size_t l = e ? (size_t)(e - p) : strlen(p);
            if (w)
                c->text[o++] = ' ';
            memcpy(c->text + o, p, l);
            o += l;
        }
        c->len[c->n] = o - c->start[c->n];
        c->bytes = o;
        c->n++;
    }
    return 0;
}

/* The reference: decode UTF-8 and count words, over the same sentences. */
static double scan_rate(const corpus_t *c, size_t *sink)
{
    double t0 = now();
    size_t words = 0, cps = 0;
    for (int rep = 0; rep < 5; rep++)
        for (size_t i = 0; i < c->n; i++) {
            const unsigned char *p = (const unsigned char *)c->text + c->start[i];
            for (size_t k = 0; k < c->len[i]; k++) {
                cps += (p[k] & 0xC0) != 0x80;
                words += p[k] == ' ';
            }
        }
    *sink = words + cps;
    return 5.0 * (double)c->bytes / 1e6 / (now() - t0);
}

static int run(const shard_tokenizer_t *tok, const corpus_t *c, shard_tokenizer_mode_t mode,
               double scan_mb_s)
{
    shard_encoding_t enc;
    shard_encoding_init(&enc);
    shard_error_t err = {0};
    size_t tokens = 0;
    /* One warm-up pass fills the word cache, as in a long-running service. */
    for (int pass = 0; pass < 2; pass++) {
        double t0 = now();
        for (size_t i = 0; i < c->n; i++) {
            shard_tokenizer_segment_t seg = {c->text + c->start[i], c->len[i], c->lang[i]};
            if (shard_tokenizer_encode(tok, mode, &seg, NULL, true, &enc, &err)) {
                fprintf(stderr, "bench-tokenize: %s\n", err.message);
                return -1;
            }
            tokens += enc.length;
        }
        double dt = now() - t0;
        if (pass == 1) {
            double mb_s = (double)c->bytes / 1e6 / dt;
            printf("mode=%s mb=%.2f sentences=%zu tokens=%zu mb_per_s=%.2f sentences_per_s=%.0f "
                   "target_mb_per_s=5 ratio_to_target=%.2f scan_mb_per_s=%.1f\n",
                   shard_tokenizer_mode_name(mode), (double)c->bytes / 1e6, c->n, tokens / 2,
                   mb_s, (double)c->n / dt, mb_s / 5.0, scan_mb_s);
        }
    }
    shard_encoding_clear(&enc);
    return 0;
}

int main(int argc, char **argv)
{
    const char *model = "models/tiny-clm-enfr";
    double mb = 4.0;
    const char *mode = "both";
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                         {"mb", required_argument, 0, 'b'},
                                         {"mode", required_argument, 0, 'o'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'm': model = optarg; break;
        case 'b': mb = atof(optarg); break;
        case 'o': mode = optarg; break;
        default:
            fprintf(stderr, "usage: bench-tokenize [--model DIR] [--mb N] [--mode hf|lang_rules|both]\n");
            return ch == 'h' ? 0 : 1;
        }
    }
    if (mb <= 0 || mb > 1024) {
        fprintf(stderr, "bench-tokenize: --mb %g, expected (0, 1024]\n", mb);
        return 1;
    }
    shard_error_t err = {0};
    shard_tokenizer_t *tok = shard_tokenizer_open(model, &err);
    if (!tok) {
        fprintf(stderr, "bench-tokenize: %s\n", err.message);
        return 1;
    }
    corpus_t c = {0};
    int rc = build_corpus(&c, (size_t)(mb * 1e6));
    size_t sink = 0;
    double scan = rc ? 0 : scan_rate(&c, &sink);
    if (rc)
        fprintf(stderr, "bench-tokenize: out of memory\n");
    /* Languages the checkpoint lacks fall back to English in the samples. */
    for (size_t i = 0; !rc && i < c.n; i++)
        if (shard_tokenizer_n_langs(tok) && shard_tokenizer_lang_id(tok, c.lang[i]) < 0)
            c.lang[i] = shard_tokenizer_lang_id(tok, "en") >= 0 ? "en" : shard_tokenizer_lang_name(tok, 0);
    if (!rc && (strcmp(mode, "hf") == 0 || strcmp(mode, "both") == 0))
        rc = run(tok, &c, SHARD_TOKENIZER_MODE_HF, scan);
    if (!rc && (strcmp(mode, "lang_rules") == 0 || strcmp(mode, "both") == 0))
        rc = run(tok, &c, SHARD_TOKENIZER_MODE_LANG_RULES, scan);
    if (sink == 1)
        puts("");
    free(c.text);
    free(c.start);
    free(c.len);
    free(c.lang);
    shard_tokenizer_destroy(&tok);
    return rc ? 1 : 0;
}
