/* C libgearman client: keeps BATCH foreground jobs of PAYLOAD_BYTES
 * (default 1) for FUNCTION (default echo) outstanding for SECONDS and
 * prints how many completed. */
#include <libgearman/gearman.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static long completed;

static gearman_return_t on_complete(gearman_task_st *task)
{
  (void)task;
  completed++;
  return GEARMAN_SUCCESS;
}

static double now(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
  if (argc < 5 || argc > 7) {
    fprintf(stderr, "usage: %s HOST PORT SECONDS BATCH [PAYLOAD_BYTES [FUNCTION]]\n", argv[0]);
    return 2;
  }
  gearman_client_st *client = gearman_client_create(NULL);
  if (client == NULL) return 1;
  if (gearman_client_add_server(client, argv[1], (in_port_t)atoi(argv[2])) != GEARMAN_SUCCESS) {
    fprintf(stderr, "%s\n", gearman_client_error(client));
    return 1;
  }
  gearman_client_add_options(client, GEARMAN_CLIENT_FREE_TASKS);
  gearman_client_set_complete_fn(client, on_complete);
  double seconds = atof(argv[3]);
  int batch = atoi(argv[4]);
  size_t size = argc >= 6 ? (size_t)atol(argv[5]) : 1;
  const char *function = argc == 7 ? argv[6] : "echo";
  char *payload = malloc(size ? size : 1);
  if (payload == NULL) return 1;
  memset(payload, 'x', size ? size : 1);
  double start = now();
  while (now() - start < seconds) {
    for (int i = 0; i < batch; i++) {
      gearman_return_t ret;
      if (gearman_client_add_task(client, NULL, NULL, function, NULL, payload, size, &ret) == NULL) {
        fprintf(stderr, "%s\n", gearman_client_error(client));
        return 1;
      }
    }
    if (gearman_client_run_tasks(client) != GEARMAN_SUCCESS) {
      fprintf(stderr, "%s\n", gearman_client_error(client));
      return 1;
    }
  }
  printf("%ld %.3f\n", completed, now() - start);
  return 0;
}
