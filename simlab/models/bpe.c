/* simlab's BPE encoder for models.bpe: tokenizers' BPE model (merge_word, then Word::merge_all),
 * written out in C over compact tables, so that it gives tokenizers' ids for every input.
 *
 * The text is one pre-tokenized word, UTF-8. Each character becomes the piece that is that
 * character, or (byte fallback) one piece per byte. Then the pair of neighbours with the lowest
 * merge rank is merged, the leftmost first among equal ranks, until no neighbours merge; a queued
 * pair is taken when its left symbol still has a right neighbour and the two still merge into the
 * queued result (tokenizers checks the result's id, not the rank: so does this).
 *
 * Integers only: every compiler and CPU gives the same ids.
 */
#include <stdint.h>
#include <stdlib.h>

typedef struct {
    uint64_t key; /* rank << 32 | position: the smallest is taken first */
    uint32_t result;
} Entry;

/* where `key` is in the sorted keys, or -1 */
static int64_t index_of(const uint64_t *keys, int64_t count, uint64_t key) {
    int64_t low = 0, high = count;
    while (low < high) {
        int64_t mid = low + (high - low) / 2;
        if (keys[mid] < key)
            low = mid + 1;
        else
            high = mid;
    }
    return (low < count && keys[low] == key) ? low : -1;
}

/* the value of `pair` in the merges (rank << 32 | result), or UINT64_MAX */
static uint64_t lookup(const uint64_t *keys, const uint64_t *values, int64_t count, uint64_t pair) {
    int64_t at = index_of(keys, count, pair);
    return at >= 0 ? values[at] : UINT64_MAX;
}

static void push(Entry *heap, int64_t *size, Entry entry) {
    int64_t at = (*size)++;
    while (at > 0) {
        int64_t parent = (at - 1) / 2;
        if (heap[parent].key <= entry.key)
            break;
        heap[at] = heap[parent];
        at = parent;
    }
    heap[at] = entry;
}

static Entry pop(Entry *heap, int64_t *size) {
    Entry top = heap[0], last = heap[--(*size)];
    int64_t at = 0;
    for (;;) {
        int64_t child = 2 * at + 1;
        if (child >= *size)
            break;
        if (child + 1 < *size && heap[child + 1].key < heap[child].key)
            child++;
        if (last.key <= heap[child].key)
            break;
        heap[at] = heap[child];
        at = child;
    }
    heap[at] = last;
    return top;
}

static void queue_pair(Entry *heap, int64_t *size, const uint64_t *keys, const uint64_t *values,
                       int64_t count, uint32_t left, uint32_t right, int64_t position) {
    uint64_t found = lookup(keys, values, count, (uint64_t)left << 32 | right);
    if (found != UINT64_MAX) {
        Entry entry = {(found >> 32) << 32 | (uint64_t)position, (uint32_t)found};
        push(heap, size, entry);
    }
}

/* the code point at text[*at], advancing *at (the text is valid UTF-8: Python encoded it) */
static uint32_t next_char(const uint8_t *text, int64_t *at) {
    uint32_t c = text[*at];
    int extra = c < 0x80 ? 0 : c < 0xE0 ? 1 : c < 0xF0 ? 2 : 3;
    c &= extra == 0 ? 0x7F : extra == 1 ? 0x1F : extra == 2 ? 0x0F : 0x07;
    for (int k = 1; k <= extra; k++)
        c = c << 6 | (text[*at + k] & 0x3F);
    *at += 1 + extra;
    return c;
}

static int64_t char_piece(const uint64_t *chars, const uint32_t *char_ids, int64_t count, uint32_t c) {
    int64_t at = index_of(chars, count, c);
    return at >= 0 ? (int64_t)char_ids[at] : -1;
}

/* Encode `size` bytes of text into ids and each id's length in bytes of the text; returns the
 * count of ids (at most `size`), or -1 when memory ran out. `chars` (sorted) and `char_ids`: the
 * pieces of one character; `byte_ids`: the 256 pieces <0x00>..<0xFF>; `keys` (sorted) and
 * `values`: the merges, left << 32 | right -> rank << 32 | result. */
int64_t simlab_bpe_encode(const uint8_t *text, int64_t size, const uint64_t *chars,
                          const uint32_t *char_ids, int64_t char_count, const uint32_t *byte_ids,
                          const uint64_t *keys, const uint64_t *values, int64_t merge_count,
                          uint32_t *ids, uint32_t *lengths) {
    int64_t n = 0;
    for (int64_t at = 0; at < size;) {
        int64_t start = at;
        int64_t piece = char_piece(chars, char_ids, char_count, next_char(text, &at));
        if (piece >= 0) {
            ids[n] = (uint32_t)piece;
            lengths[n++] = (uint32_t)(at - start);
        } else {
            for (int64_t b = start; b < at; b++) {
                ids[n] = byte_ids[text[b]];
                lengths[n++] = 1;
            }
        }
    }
    if (n < 2)
        return n;
    int64_t *prev = malloc(sizeof(int64_t) * n), *next = malloc(sizeof(int64_t) * n);
    Entry *heap = malloc(sizeof(Entry) * (3 * n));
    if (!prev || !next || !heap) {
        free(prev), free(next), free(heap);
        return -1;
    }
    int64_t queued = 0;
    for (int64_t i = 0; i < n; i++) {
        prev[i] = i - 1;
        next[i] = i + 1 < n ? i + 1 : -1;
    }
    for (int64_t i = 0; i + 1 < n; i++)
        queue_pair(heap, &queued, keys, values, merge_count, ids[i], ids[i + 1], i);
    while (queued > 0) {
        Entry top = pop(heap, &queued);
        int64_t at = (int64_t)(top.key & 0xFFFFFFFFu), right = next[at];
        if (lengths[at] == 0 || right < 0)
            continue;
        uint64_t now = lookup(keys, values, merge_count, (uint64_t)ids[at] << 32 | ids[right]);
        if (now == UINT64_MAX || (uint32_t)now != top.result)
            continue; /* a stale entry: its pair has changed since */
        ids[at] = top.result;
        lengths[at] += lengths[right];
        lengths[right] = 0;
        next[at] = next[right];
        if (next[right] >= 0)
            prev[next[right]] = at;
        if (prev[at] >= 0)
            queue_pair(heap, &queued, keys, values, merge_count, ids[prev[at]], ids[at], prev[at]);
        if (next[at] >= 0)
            queue_pair(heap, &queued, keys, values, merge_count, ids[at], ids[next[at]], at);
    }
    int64_t kept = 0;
    for (int64_t i = 0; i < n; i++)
        if (lengths[i] != 0) {
            ids[kept] = ids[i];
            lengths[kept++] = lengths[i];
        }
    free(prev), free(next), free(heap);
    return kept;
}
