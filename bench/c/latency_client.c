/* C libgearman client: COUNT echo jobs of PAYLOAD bytes, one at a time
 * (each waits for the previous answer); prints each round trip as
 * "FUNCTION MICROSECONDS", one per line. The worker side is what varies.
 *
 * FUNCTIONS (comma-separated, default "echo") are taken in turn, job by
 * job: with one worker per function, every contender is measured in the
 * same instants as the others, so the machine's drift (other load, stolen
 * time, gearmand's thread placement) falls on all of them alike. */
#include <libgearman/gearman.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_FUNCTIONS 8

static double now_us(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int split(char *list, char **names)
{
  int count = 0;
  for (char *name = strtok(list, ","); name != NULL && count < MAX_FUNCTIONS; name = strtok(NULL, ","))
    names[count++] = name;
  return count;
}

int main(int argc, char **argv)
{
  if (argc != 5 && argc != 6) {
    fprintf(stderr, "usage: %s HOST PORT COUNT PAYLOAD_BYTES [FUNCTION,...]\n", argv[0]);
    return 2;
  }
  char default_function[] = "echo";
  char *names[MAX_FUNCTIONS];
  int functions = split(argc == 6 ? argv[5] : default_function, names);
  if (functions == 0) { fprintf(stderr, "no function given\n"); return 2; }
  gearman_client_st *client = gearman_client_create(NULL);
  if (client == NULL) return 1;
  if (gearman_client_add_server(client, argv[1], (in_port_t)atoi(argv[2])) != GEARMAN_SUCCESS) {
    fprintf(stderr, "%s\n", gearman_client_error(client));
    return 1;
  }
  long count = atol(argv[3]);
  size_t size = (size_t)atol(argv[4]);
  char *payload = malloc(size ? size : 1);
  memset(payload, 'x', size ? size : 1);
  for (long i = 0; i < count; i++) {
    const char *function = names[i % functions];
    size_t result_size = 0;
    gearman_return_t ret;
    double start = now_us();
    void *result = gearman_client_do(client, function, NULL, payload, size, &result_size, &ret);
    double took = now_us() - start;
    if (ret != GEARMAN_SUCCESS || result_size != size) {
      fprintf(stderr, "job %ld (%s): %s (got %zu bytes)\n", i, function, gearman_client_error(client), result_size);
      return 1;
    }
    free(result);
    printf("%s %.1f\n", function, took);
  }
  gearman_client_free(client);
  free(payload);
  return 0;
}
