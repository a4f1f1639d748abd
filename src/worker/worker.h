/*-------------------------------------------------------------------------
 *
 * worker/worker.h
 *		The key-state poller.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BYOK_WORKER_H
#define BYOK_WORKER_H

extern void byok_worker_register(void);

#endif							/* BYOK_WORKER_H */
