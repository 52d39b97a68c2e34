/* C libgearman client: COUNT echo jobs of PAYLOAD bytes, one at a time
 * (each waits for the previous answer); prints each round trip in
 * microseconds, one per line. The worker side is what varies. */
#include <libgearman/gearman.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_us(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

int main(int argc, char **argv)
{
  if (argc != 5) { fprintf(stderr, "usage: %s HOST PORT COUNT PAYLOAD_BYTES\n", argv[0]); return 2; }
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
    size_t result_size = 0;
    gearman_return_t ret;
    double start = now_us();
    void *result = gearman_client_do(client, "echo", NULL, payload, size, &result_size, &ret);
    double took = now_us() - start;
    if (ret != GEARMAN_SUCCESS || result_size != size) {
      fprintf(stderr, "job %ld: %s (got %zu bytes)\n", i, gearman_client_error(client), result_size);
      return 1;
    }
    free(result);
    printf("%.1f\n", took);
  }
  gearman_client_free(client);
  free(payload);
  return 0;
}
