/* map.c: a chained hash map from byte strings to borrowed pointers.
 *
 * Nodes carry a copy of their key. The table doubles when it holds as many
 * entries as buckets. The hash (FNV-1a over a random seed, then a final
 * mix) is seeded per map, so that keys chosen by clients cannot be aimed
 * at one chain. */
#include "broker_internal.h"

#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

typedef struct map_node {
    struct map_node *next;
    uint64_t hash;
    void *value;
    size_t len;
    unsigned char key[];
} map_node_t;

struct broker_map {
    map_node_t **buckets;
    size_t n_buckets; /* a power of two */
    size_t size;
    uint64_t seed;
};

enum { MAP_INITIAL_BUCKETS = 64 };

static uint64_t map_hash(uint64_t seed, const void *key, size_t len)
{
    const unsigned char *p = key;
    uint64_t h = 0xcbf29ce484222325ull ^ seed;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    /* splitmix64 finaliser: every input bit reaches the low bits. */
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebull;
    h ^= h >> 31;
    return h;
}

static uint64_t map_seed(void)
{
    uint64_t seed;
    if (getrandom(&seed, sizeof seed, GRND_NONBLOCK) == (ssize_t)sizeof seed)
        return seed;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ull ^ (uint64_t)ts.tv_sec;
}

broker_map_t *broker_map_new(void)
{
    broker_map_t *map = calloc(1, sizeof *map);
    if (!map)
        return NULL;
    map->buckets = calloc(MAP_INITIAL_BUCKETS, sizeof *map->buckets);
    if (!map->buckets) {
        free(map);
        return NULL;
    }
    map->n_buckets = MAP_INITIAL_BUCKETS;
    map->seed = map_seed();
    return map;
}

void broker_map_destroy(broker_map_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    broker_map_t *map = *self_p;
    for (size_t i = 0; i < map->n_buckets; i++) {
        map_node_t *node = map->buckets[i];
        while (node) {
            map_node_t *next = node->next;
            free(node);
            node = next;
        }
    }
    free(map->buckets);
    free(map);
    *self_p = NULL;
}

static map_node_t **map_slot(const broker_map_t *map, uint64_t hash, const void *key, size_t len)
{
    map_node_t **slot = &map->buckets[hash & (map->n_buckets - 1)];
    while (*slot && !((*slot)->hash == hash && (*slot)->len == len &&
                      memcmp((*slot)->key, key, len) == 0))
        slot = &(*slot)->next;
    return slot;
}

/* Doubles the table; on allocation failure keeps the old one (longer chains). */
static void map_grow(broker_map_t *map)
{
    if (map->n_buckets > SIZE_MAX / 2 / sizeof *map->buckets)
        return;
    size_t n = map->n_buckets * 2;
    map_node_t **buckets = calloc(n, sizeof *buckets);
    if (!buckets)
        return;
    for (size_t i = 0; i < map->n_buckets; i++) {
        map_node_t *node = map->buckets[i];
        while (node) {
            map_node_t *next = node->next;
            node->next = buckets[node->hash & (n - 1)];
            buckets[node->hash & (n - 1)] = node;
            node = next;
        }
    }
    free(map->buckets);
    map->buckets = buckets;
    map->n_buckets = n;
}

broker_status_t broker_map_put(broker_map_t *map, const void *key, size_t len, void *value)
{
    uint64_t hash = map_hash(map->seed, key, len);
    map_node_t **slot = map_slot(map, hash, key, len);
    if (*slot) {
        (*slot)->value = value;
        return BROKER_OK;
    }
    map_node_t *node = malloc(sizeof *node + len);
    if (!node)
        return BROKER_ERR_NOMEM;
    node->next = NULL;
    node->hash = hash;
    node->value = value;
    node->len = len;
    memcpy(node->key, key, len);
    *slot = node;
    if (++map->size >= map->n_buckets)
        map_grow(map);
    return BROKER_OK;
}

void *broker_map_get(const broker_map_t *map, const void *key, size_t len)
{
    map_node_t *node = *map_slot(map, map_hash(map->seed, key, len), key, len);
    return node ? node->value : NULL;
}

void *broker_map_remove(broker_map_t *map, const void *key, size_t len)
{
    map_node_t **slot = map_slot(map, map_hash(map->seed, key, len), key, len);
    map_node_t *node = *slot;
    if (!node)
        return NULL;
    void *value = node->value;
    *slot = node->next;
    free(node);
    map->size--;
    return value;
}

size_t broker_map_size(const broker_map_t *map)
{
    return map->size;
}
